"""Negative preference optimisation: a bounded gradient ascent.

Zhang, Lin, Bai and Mei, "Negative Preference Optimization: Towards
Catastrophic Collapse to Effective Unlearning", COLM 2024,
https://arxiv.org/abs/2404.05868

DPO with the forget sequences as the rejected answers and no preferred
one. With log-ratio r = log p_theta(y) - log p_ref(y) of a whole forget
sequence against the original model,

    L_NPO = -(2 / beta) E[ log sigmoid(-beta r) ]

Its gradient is gradient ascent's, weighted by sigmoid(beta r): once a
sequence is less likely than under the original, its weight fades, so the
loss is bounded below and the model does not collapse as fast as under
plain ascent (as beta -> 0, NPO becomes gradient ascent). NPO+RT adds the
retain set's NLL, as `graddiff` does.
"""
from dataclasses import dataclass, field, replace

import torch.nn.functional as F

from ..core import WorkbenchError
from ..core.scoring import token_logprobs, token_nll, token_stats
from .graddiff import GradDiffConfig, paired_plan

NAME = 'npo'
TITLE = 'negative preference optimisation + retain NLL (Zhang et al.)'
ORDER = 40
NEEDS = ('retain',)
HELPERS = ()


@dataclass
class NPOConfig(GradDiffConfig):
    """Hyperparameters: beta 0.1 and retain weight 1 (NPO+RT) are the
    paper's and OpenUnlearning's defaults."""
    beta: float = field(default=0.1, metadata={
        'min': 0.01, 'max': 5.0, 'log': True,
        'help': 'inverse temperature of the log-ratio'})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise WorkbenchError(f'NPO needs beta > 0, got {self.beta}')


Config = NPOConfig


def sequence_logprob(model, batch):
    """log p(y): the sum of a sequence's token log-probabilities."""
    logp, mask = token_logprobs(model, batch)
    return (logp * mask).sum(1)


def sequence_logprobs(model, tokens):
    """log p(y) of every tokenised row under `model`, without gradient."""
    s = token_stats(model, tokens['input_ids'], tokens['attention_mask'])
    return (s['logprob'] * s['mask']).sum(1)


def npo_loss(model, batch, beta=0.1, forget_weight=1.0,
             retain_weight=1.0):
    """NPO on the forget rows (their reference log-probabilities come with
    the batch), plus the retain NLL."""
    forget = batch['forget']
    logp = sequence_logprob(model, forget)
    ratio = logp - forget['reference_logprob'].to(logp.device)
    # L_NPO = -(2 / beta) * E[log sigmoid(-beta * (log p_theta - log p_ref))]
    npo = -(2 / beta) * F.logsigmoid(-beta * ratio).mean()
    retain = token_nll(model, batch['retain'])
    loss = forget_weight * npo + retain_weight * retain
    return loss, {'npo': npo.item(), 'log_ratio': ratio.mean().item(),
                  'retain_nll': retain.item()}


def plan(task, model, config):
    """NPO (+RT when `retain_weight` > 0): log p_ref of each forget row is
    taken once, from the original model (`task.reference`)."""
    with task.original_model(model) as ref:
        reference_logprob = sequence_logprobs(ref, task.forget)
    forget = dict(task.forget, reference_logprob=reference_logprob)

    def loss_fn(m, batch):
        return npo_loss(m, batch, config.beta, config.forget_weight,
                        config.retain_weight)
    return paired_plan(replace(task, forget=forget), config, loss_fn, 'NPO')
