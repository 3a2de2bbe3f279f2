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

from .. import WorkbenchError
from ..data import full_batches
from ..train import TrainConfig, token_nll, train
from . import ga


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
check_learned = ga.check_learned


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


def run(model, loss_fn, forget, retain, config, callbacks, evaluate,
        should_stop, guard_bound, progress, desc):
    """The loop both GradDiff and NPO use (Adam 0.9/0.98, as `ga`)."""
    it, accum = paired_batches(forget, retain, config)
    loop = TrainConfig(lr=config.lr, steps=config.steps, grad_accum=accum,
                       optimizer='adam', betas=(0.9, 0.98), seed=config.seed,
                       guard_bound=guard_bound, desc=desc, progress=progress)
    return train(model, loss_fn, it, loop, callbacks, evaluate, should_stop)


def unlearn(model, forget, config, retain_tokens=None, callbacks=(),
            evaluate=None, should_stop=None, guard_bound=float('inf'),
            progress=True):
    """Gradient difference on `forget` holding `retain_tokens`; returns the
    TrainResult."""
    def loss_fn(m, batch):
        return graddiff_loss(m, batch, config.forget_weight,
                             config.retain_weight)
    return run(model, loss_fn, forget, retain_tokens, config, callbacks,
               evaluate, should_stop, guard_bound, progress,
               'gradient difference')
