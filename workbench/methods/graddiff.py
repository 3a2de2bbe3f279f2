"""Gradient difference: gradient ascent on the forget set, descent on the
retain set.

A standard baseline of the unlearning benchmarks (TOFU, Maini et al.
2024, https://arxiv.org/abs/2401.06121; OpenUnlearning's `GradDiff`):
the retain term holds the model on what it should keep while the forget
term pushes the forget sequences away. Steps are full-batch over the
forget set, as in gradient ascent (`ga`), each paired with as many retain
sequences drawn at random.
"""
from dataclasses import dataclass, field

import torch

from ..core import WorkbenchError
from ..core.data import full_batches
from ..core.scoring import token_nll
from .base import Plan

NAME = 'graddiff'
TITLE = 'ascent on the forget set, descent on --retain (TOFU)'
ORDER = 30
NEEDS = ('retain',)
HELPERS = ()


@dataclass
class GradDiffConfig:
    """Hyperparameters (OpenUnlearning's defaults: both weights 1)."""
    lr: float = field(default=5e-5, metadata={
        'min': 1e-6, 'max': 1e-2, 'log': True, 'help': 'Adam learning rate'})
    steps: int = field(default=10, metadata={
        'min': 1, 'max': 60, 'help': 'most steps'})
    forget_weight: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'gamma: weight of the ascent on '
                                        'the forget set'})
    retain_weight: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'alpha: weight of the descent on '
                                        'the retain set'})
    micro_batch: int = field(default=8, metadata={
        'min': 1, 'max': 32, 'help': 'sequences per forward pass'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        if (not self.lr > 0 or self.steps < 1 or self.micro_batch < 1
                or min(self.forget_weight, self.retain_weight) < 0):
            raise WorkbenchError(f'{type(self).__name__} needs lr > 0, '
                                 f'steps >= 1, micro_batch >= 1 and weights '
                                 f'>= 0, got {self}')


Config = GradDiffConfig


def graddiff_loss(model, batch, forget_weight=1.0, retain_weight=1.0):
    """-gamma NLL(forget) + alpha NLL(retain)."""
    forget = token_nll(model, batch['forget'])
    retain = token_nll(model, batch['retain'])
    # L = -gamma * L_NLL(D_f) + alpha * L_NLL(D_r)
    loss = -forget_weight * forget + retain_weight * retain
    return loss, {'forget_nll': forget.item(), 'retain_nll': retain.item()}


def paired_batches(forget, retain, config):
    """(iterator, accumulation steps): each step the whole forget set in
    micro-batches, each paired with as many retain rows drawn at random."""
    if retain is None or retain['input_ids'].shape[0] == 0:
        raise WorkbenchError(f'{type(config).__name__[:-6]} needs a retain '
                             f'set')
    it, accum = full_batches(forget, config.micro_batch)
    gen = torch.Generator().manual_seed(config.seed)
    n = retain['input_ids'].shape[0]

    def gen_batches():
        for chunk in it:
            idx = torch.randint(n, (chunk['input_ids'].shape[0],),
                                generator=gen)
            yield {'forget': chunk,
                   'retain': {k: v[idx] for k, v in retain.items()}}
    return gen_batches(), accum


def paired_plan(task, config, loss_fn, desc):
    """The steps GradDiff and NPO take: the whole forget set, each
    micro-batch paired with retain rows (Adam 0.9/0.98, as `ga`)."""
    it, accum = paired_batches(task.forget, task.retain, config)
    return Plan(loss_fn, it, accum, desc=desc,
                loop={'optimizer': 'adam', 'betas': (0.9, 0.98)})


def plan(task, model, config):
    """Gradient difference on the forget set, holding the retain set."""
    def loss_fn(m, batch):
        return graddiff_loss(m, batch, config.forget_weight,
                             config.retain_weight)
    return paired_plan(task, config, loss_fn, 'gradient difference')
