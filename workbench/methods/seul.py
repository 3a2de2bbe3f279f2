"""SeUL: selective unlearning of sensitive spans.

Wang et al., "Selective Forgetting: Advancing Machine Unlearning Techniques
and Evaluation in Language Models", AAAI 2025,
https://arxiv.org/abs/2402.05813

Gradient ascent as in Jang et al., but only on the tokens of sensitive
spans: the rest of each forget sequence (the wording it shares with every
other text) gets no loss, so the model is not taught to un-say ordinary
language. The spans come from online selection (tokens the model finds
unlikely, merged into spans), chosen once by the original model or afresh
at every step by the current one, or from an offline annotation.
"""
from dataclasses import dataclass, field

import torch

from ..core import WorkbenchError
from ..core.scoring import token_logprobs, token_nll, token_stats
from . import ga

NAME = 'seul'
TITLE = 'gradient ascent on sensitive spans only (Wang et al.)'
ORDER = 20
NEEDS = ()
HELPERS = ()


@dataclass
class SeULConfig:
    """Hyperparameters of SeUL (Jang et al.'s optimiser settings; the
    selection's defaults are the workbench's, the paper's are not known)."""
    lr: float = field(default=5e-5, metadata={
        'min': 1e-6, 'max': 1e-2, 'log': True, 'help': 'Adam learning rate'})
    steps: int = field(default=10, metadata={
        'min': 1, 'max': 60, 'help': 'most steps (full-batch epochs)'})
    spans: str = field(default='online', metadata={
        'choices': ['online', 'annotated'],
        'help': 'online selection, or the offline annotation'})
    selector: str = field(default='original', metadata={
        'choices': ['original', 'current'],
        'help': 'online: the model before unlearning selects once, or the '
                'current model at every step'})
    quantile: float = field(default=0.3, metadata={
        'min': 0.05, 'max': 1.0, 'step': 0.05,
        'help': 'online: select the least likely share of each sequence'})
    threshold: float = field(default=0.0, metadata={
        'min': 0.0, 'max': 1.0, 'step': 0.05,
        'help': 'online: select tokens with p below this (0: use quantile)'})
    merge_gap: int = field(default=1, metadata={
        'min': 0, 'max': 4, 'help': 'online: join selected tokens at most '
                                    'this many tokens apart into one span'})
    batch_size: int = field(default=0, metadata={
        'min': 0, 'max': 32, 'help': 'sequences per step; 0: all'})
    micro_batch: int = field(default=8, metadata={
        'min': 1, 'max': 32, 'help': 'sequences per forward pass'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        if (not self.lr > 0 or self.steps < 1 or not 0 < self.quantile <= 1
                or not 0 <= self.threshold < 1 or self.merge_gap < 0
                or self.spans not in ('online', 'annotated')
                or self.selector not in ('original', 'current')):
            raise WorkbenchError(f'SeUL needs lr > 0, steps >= 1, 0 < '
                                 f'quantile <= 1, 0 <= threshold < 1, '
                                 f'merge_gap >= 0, spans online|annotated '
                                 f'and selector original|current; got {self}')


Config = SeULConfig


def select_tokens(logprob, mask, quantile=0.3, threshold=0.0, merge_gap=1):
    """Online span selection: the unlikely tokens, merged into spans.

    `logprob` and `mask` are (B, T-1), aligned with the targets x_1..x_T-1.
    Returns a (B, T-1) bool mask of the selected targets.
    """
    # T_S(x) = {t : p(x_t | x_<t) < tau}, tau a probability threshold or
    # the bottom `quantile` of the sequence's own token probabilities
    sel = torch.zeros_like(mask, dtype=torch.bool)
    for b in range(logprob.shape[0]):
        lp = logprob[b][mask[b].bool()]
        if lp.numel() == 0:
            continue
        tau = (torch.log(torch.tensor(threshold)) if threshold > 0
               else torch.quantile(lp.float(), quantile))
        sel[b] = (logprob[b] <= tau) & mask[b].bool()
    return merge_gaps(sel, merge_gap) & mask.bool()


def merge_gaps(sel, gap):
    """Fill runs of at most `gap` unselected tokens between selected ones."""
    out = sel.clone()
    for b in range(sel.shape[0]):
        idx = sel[b].nonzero().flatten().tolist()
        for a, c in zip(idx, idx[1:]):
            if 1 < c - a <= gap + 1:
                out[b, a:c] = True
    return out


def seul_loss(model, batch):
    """Gradient ascent on the span tokens only (minimised by the loop).

    The batch carries `target_mask` (B, T), the span tokens: fixed (an
    annotation, or the original model's selection), or filled in by
    `current_selection_loss` at every step.
    """
    # L_SeUL(x) = 1/|T_S| sum_{t in T_S} log p(x_t | x_<t)
    return -token_nll(model, batch)


def current_selection_loss(config):
    """A loss that selects the spans with the current model at each step,
    from the same forward pass (the selection drifts as unlearning goes)."""
    def loss(model, batch):
        logp, valid = token_logprobs(model, batch)
        sel = select_tokens(logp.detach(), valid, config.quantile,
                            config.threshold, config.merge_gap)
        mean_logp = (logp * sel).sum() / sel.sum().clamp(min=1)
        return mean_logp, {'selected': sel.sum().item() / valid.sum().item()}
    return loss


def ascent_share_on_spans(stats, span_mask):
    """The share of full-sequence gradient ascent's gradient that already
    falls on the span tokens: how different SeUL's update can be at all.

    `stats` is `metrics.token_stats` of the texts (log-probabilities of the
    targets x_1..x_T-1 and their mask), `span_mask` (B, T) the span tokens.
    """
    # d log p(x_t) / d z_t = onehot(x_t) - softmax(z_t), whose L1 norm is
    # 2 (1 - p(x_t)): a memorised token (p near 1) gets almost no gradient
    weight = (1 - stats['logprob'].exp()) * stats['mask']
    on_spans = weight * span_mask[:, 1:].to(weight.dtype)
    return (on_spans.sum() / weight.sum().clamp(min=1e-12)).item()


def original_selection(model, forget, config, stats=None):
    """The spans the model selects before unlearning: (B, T) bool, aligned
    with `forget['input_ids']` (position 0 never selected). `stats`: the
    texts' `token_stats` under `model`, if already computed."""
    s = stats or token_stats(model, forget['input_ids'],
                             forget['attention_mask'])
    sel = select_tokens(s['logprob'], s['mask'], config.quantile,
                        config.threshold, config.merge_gap)
    return torch.nn.functional.pad(sel, (1, 0))


def plan(task, model, config):
    """SeUL on the forget set: on the annotated spans (`task.span_mask`,
    with `spans='annotated'`), on those the original model selects, or on
    those the current model selects at every step."""
    forget = task.forget
    if config.spans == 'annotated':
        if task.span_mask is None:
            raise WorkbenchError("spans='annotated' needs the annotated span "
                                 "mask (the task's span_mask)")
        forget, loss = {**forget, 'target_mask': task.span_mask}, seul_loss
    elif config.selector == 'original':
        mask = original_selection(model, forget, config)
        forget, loss = {**forget, 'target_mask': mask}, seul_loss
    else:
        loss = current_selection_loss(config)
    return ga.ascent_plan(forget, config, loss, 'SeUL')
