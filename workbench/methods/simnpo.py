"""SimNPO: negative preference optimisation without a reference model.

Fan, Liu, Lin, Jia, Zhang, Mei and Liu, "Simplicity Prevails: Rethinking
Negative Preference Optimization for LLM Unlearning", 2024,
https://arxiv.org/abs/2410.07163

NPO (`npo`) weighs each forget sequence by how far it has moved from the
original model, which favours short sequences and needs the original at
hand. SimNPO replaces the log-ratio against the reference by the
length-normalised log-likelihood, shifted by a margin delta:

    L_SimNPO = -(2 / beta) E[ log sigmoid(beta (-log p_theta(y) / |y| - delta)) ]

(as OpenUnlearning writes it: beta times the mean NLL of the sequence's
tokens, minus delta, inside the sigmoid). Its gradient is gradient ascent
on the mean token NLL of each sequence, weighted by
sigmoid(-beta (NLL / |y| - delta)): once a sequence's mean NLL is well
above delta, its weight fades. The retain set's NLL is added as in NPO+RT.
No reference model is needed, so it costs what GradDiff costs.
"""
from dataclasses import dataclass, field

import torch.nn.functional as F

from ..core import WorkbenchError
from ..core.scoring import token_logprobs, token_nll
from .graddiff import GradDiffConfig, paired_plan

NAME = 'simnpo'
TITLE = 'NPO without a reference, length-normalised (Fan et al.)'
ORDER = 45
NEEDS = ('retain',)
HELPERS = ()


@dataclass
class SimNPOConfig(GradDiffConfig):
    """Hyperparameters: OpenUnlearning's TOFU defaults (beta 4.5, delta 0,
    forget weight 0.125, retain weight 1)."""
    forget_weight: float = field(default=0.125, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'gamma: weight of the SimNPO term'})
    beta: float = field(default=4.5, metadata={
        'min': 0.1, 'max': 20.0, 'log': True,
        'help': 'inverse temperature of the mean NLL'})
    delta: float = field(default=0.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'margin on the mean NLL'})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0 or self.delta < 0:
            raise WorkbenchError(f'SimNPO needs beta > 0 and delta >= 0, '
                                 f'got beta {self.beta}, delta {self.delta}')


Config = SimNPOConfig


def mean_token_nll(model, batch):
    """-log p(y) / |y| of each row: the mean NLL of its target tokens."""
    logp, mask = token_logprobs(model, batch)
    return -(logp * mask).sum(1) / mask.sum(1).clamp(min=1)


def simnpo_loss(model, batch, beta=4.5, delta=0.0, forget_weight=0.125,
                retain_weight=1.0):
    """SimNPO on the forget rows, plus the retain NLL."""
    nll = mean_token_nll(model, batch['forget'])
    # L_SimNPO = -(2 / beta) * E[log sigmoid(beta * (NLL / |y| - delta))]
    simnpo = -(2 / beta) * F.logsigmoid(beta * (nll - delta)).mean()
    retain = token_nll(model, batch['retain'])
    loss = forget_weight * simnpo + retain_weight * retain
    return loss, {'simnpo': simnpo.item(), 'forget_nll': nll.mean().item(),
                  'retain_nll': retain.item()}


def plan(task, model, config):
    """SimNPO (+ retain NLL when `retain_weight` > 0), in GradDiff's steps:
    the whole forget set, each micro-batch paired with retain rows."""
    def loss_fn(m, batch):
        return simnpo_loss(m, batch, config.beta, config.delta,
                           config.forget_weight, config.retain_weight)
    return paired_plan(task, config, loss_fn, 'SimNPO')
