"""Gradient ascent: the simplest unlearning method.

Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language
Models", ACL 2023, https://arxiv.org/abs/2210.01504

Train on the forget sequences with the language-modelling loss negated:
every step raises their negative log-likelihood, until the model remembers
them no better than text it never saw (the forgetting thresholds). Nothing
holds the rest of the model in place, which is why the collateral damage on
retained data must be measured.
"""
from dataclasses import dataclass, field

import torch

from .. import WorkbenchError
from ..data import batches
from ..train import TrainConfig, token_nll, train


@dataclass
class GAConfig:
    """Hyperparameters of gradient ascent (Jang et al.'s defaults)."""
    lr: float = field(default=5e-5, metadata={
        'min': 1e-6, 'max': 1e-3, 'log': True, 'help': 'Adam learning rate'})
    steps: int = field(default=10, metadata={
        'min': 1, 'max': 60, 'help': 'gradient-ascent steps'})
    batch_size: int = field(default=4, metadata={
        'min': 1, 'max': 32, 'help': 'forget sequences per step'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        if not self.lr > 0 or self.steps < 1 or self.batch_size < 1:
            raise WorkbenchError(f'gradient ascent needs lr > 0, steps >= 1 '
                                 f'and batch_size >= 1, got {self}')


def ga_loss(model, batch):
    """Minimising -NLL is gradient ascent on the forget sequences."""
    # L_UL(x) = -sum_t log p(x_t | x_<t); theta <- theta + eta grad(NLL)
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


def unlearn(model, forget, config, callbacks=(), evaluate=None,
            should_stop=None, guard_bound=float('inf'), progress=True):
    """Run gradient ascent on `forget` (tokenised); return a TrainResult."""
    gen = torch.Generator().manual_seed(config.seed)
    loop = TrainConfig(lr=config.lr, steps=config.steps, optimizer='adam',
                       betas=(0.9, 0.98), seed=config.seed,
                       guard_bound=guard_bound, desc='gradient ascent',
                       progress=progress)
    return train(model, ga_loss, batches(forget, config.batch_size, gen),
                 loop, callbacks, evaluate, should_stop)
