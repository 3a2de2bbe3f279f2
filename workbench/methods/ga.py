"""Gradient ascent: the simplest unlearning method.

Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language
Models", ACL 2023, https://arxiv.org/abs/2210.01504

Train on the forget sequences with the language-modelling loss negated:
every step raises their negative log-likelihood, until the model remembers
them no better than text it never saw (the forgetting thresholds). As in the
paper, each step (an "epoch") is one full-batch update over the whole
forget set, with Adam (0.9, 0.98) and dropout off; the metrics are measured
after every step. Nothing holds the rest of the model in place, which is why
the collateral damage on retained data must be measured.
"""
from dataclasses import dataclass, field

import torch

from ..core import WorkbenchError
from ..core.data import batches, full_batches
from ..core.scoring import token_nll
from .base import Plan

NAME = 'ga'
TITLE = 'gradient ascent (Jang et al., ACL 2023)'
ORDER = 10
NEEDS = ()
HELPERS = ()


@dataclass
class GAConfig:
    """Hyperparameters of gradient ascent (Jang et al.'s defaults)."""
    lr: float = field(default=5e-5, metadata={
        'min': 1e-6, 'max': 1e-2, 'log': True, 'help': 'Adam learning rate'})
    steps: int = field(default=10, metadata={
        'min': 1, 'max': 60, 'help': 'most gradient-ascent steps (epochs)'})
    batch_size: int = field(default=0, metadata={
        'min': 0, 'max': 32, 'help': 'sequences per step; 0: the whole '
                                     'forget set (Jang et al.)'})
    micro_batch: int = field(default=8, metadata={
        'min': 1, 'max': 32, 'help': 'sequences per forward pass '
                                     '(gradients accumulate to the batch)'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        if (not self.lr > 0 or self.steps < 1 or self.batch_size < 0
                or self.micro_batch < 1):
            raise WorkbenchError(f'gradient ascent needs lr > 0, steps >= 1, '
                                 f'batch_size >= 0 and micro_batch >= 1, '
                                 f'got {self}')


Config = GAConfig


def ga_loss(model, batch):
    """Minimising -NLL is gradient ascent on the forget sequences."""
    # L_UL(x) = -sum_t -log p(x_t | x_<t); theta <- theta - eta grad L_UL
    return -token_nll(model, batch)


def step_batches(forget, config):
    """(batch iterator, gradient-accumulation steps) for `config`: the whole
    forget set per step when `batch_size` is 0, else shuffled minibatches."""
    if config.batch_size == 0:
        return full_batches(forget, config.micro_batch)
    gen = torch.Generator().manual_seed(config.seed)
    return batches(forget, config.batch_size, gen), 1


def ascent_plan(forget, config, loss, desc):
    """Steps of `loss` over the forget set as Jang et al. take them (SeUL
    too): full-batch or minibatches, Adam (0.9, 0.98)."""
    it, accum = step_batches(forget, config)
    # a full-batch step's forward pass covers the whole forget set, so the
    # evaluation of the forget set can read it (`eval_before_update`)
    return Plan(loss, it, accum, desc=desc,
                loop={'optimizer': 'adam', 'betas': (0.9, 0.98),
                      'reuse_heap': True,
                      'eval_before_update': config.batch_size == 0})


def plan(task, model, config):
    """Gradient ascent on the forget set."""
    return ascent_plan(task.forget, config, ga_loss, 'gradient ascent')
