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

from .. import WorkbenchError
from ..data import batches, full_batches
from ..train import TrainConfig, token_nll, train


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


def check_learned(forget_ma, threshold_ma):
    """Indices of forget items the model knows better than unseen text.

    Items at or below the threshold were never learned: unlearning them
    would only push noise. Raises when none is learned.
    """
    learned = [i for i, m in enumerate(forget_ma) if m > threshold_ma]
    if not learned:
        raise WorkbenchError(
            f'the model never learned the forget set (every item has MA at '
            f'or below {threshold_ma:.3f}, the level of unseen text): there '
            f'is nothing to unlearn; implant it first (--implant)')
    return learned


def step_batches(forget, config):
    """(batch iterator, gradient-accumulation steps) for `config`: the whole
    forget set per step when `batch_size` is 0, else shuffled minibatches."""
    if config.batch_size == 0:
        return full_batches(forget, config.micro_batch)
    gen = torch.Generator().manual_seed(config.seed)
    return batches(forget, config.batch_size, gen), 1


def unlearn(model, forget, config, callbacks=(), evaluate=None,
            should_stop=None, guard_bound=float('inf'), progress=True,
            loss_fn=ga_loss, desc='gradient ascent'):
    """Run gradient ascent on `forget` (tokenised); return a TrainResult."""
    it, accum = step_batches(forget, config)
    # a full-batch step's forward pass covers the whole forget set, so the
    # evaluation of the forget set can read it (`eval_before_update`)
    loop = TrainConfig(lr=config.lr, steps=config.steps, grad_accum=accum,
                       optimizer='adam', betas=(0.9, 0.98), seed=config.seed,
                       guard_bound=guard_bound, desc=desc, progress=progress,
                       reuse_heap=True,
                       eval_before_update=config.batch_size == 0)
    return train(model, loss_fn, it, loop, callbacks, evaluate, should_stop)
