"""Divergences between next-token distributions, and KGA's evaluation.

`token_kl` is the training signal of the distillation methods (the
leave-one-out ensemble, KGA); `token_jsd` and `lpd_pdlp` are KGA's measures
of how close an unlearned model is to one retrained without the forget set.
"""
import math

import numpy as np
import torch


class _PositionKL(torch.autograd.Function):
    """sum_v exp(t_v) (t_v - l_v) at every position of (B, T, V) log-
    distributions t and l, in nats, (B, T).

    The plain expression keeps exp(t) for its backward pass and makes two
    more (B, T, V) temporaries: with a 49k vocabulary that was most of the
    memory of a distillation update. Here the forward pass goes one row at
    a time and the backward pass rebuilds exp(t) from t (which the caller
    holds anyway): d/dl = -exp(t), d/dt = exp(t) (t - l + 1). A float16
    target (half the memory to hold) is used in l's precision.
    """

    @staticmethod
    def forward(ctx, target_logp, logp):
        ctx.save_for_backward(target_logp, logp)
        out = logp.new_empty(logp.shape[:-1])
        for i in range(logp.shape[0]):
            t = target_logp[i].to(logp.dtype)
            out[i] = (t.exp() * (t - logp[i])).sum(-1)
        return out

    @staticmethod
    def backward(ctx, grad):
        t, logp = ctx.saved_tensors
        t, g = t.to(logp.dtype), grad[..., None]
        grad_t = grad_logp = None
        if ctx.needs_input_grad[0]:
            grad_t = t.exp() * (t - logp + 1) * g
        if ctx.needs_input_grad[1]:
            grad_logp = t.exp().mul_(g).neg_()
        return grad_t, grad_logp


def token_kl(target_logp, logp, mask):
    """Mean over real target tokens of KL(target || model) per position:
    sum_v q(v) (log q(v) - log p(v)). Both log-distributions are (B, T, V);
    padded positions (mask False) are left out, not averaged in. A target
    computed over a wider batch is cut to the model's width."""
    target_logp = target_logp[:, :logp.shape[1]]
    kl = _PositionKL.apply(target_logp, logp)  # the sum above, per position
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def token_jsd(logp, logq, mask):
    """Jensen-Shannon divergence per position, (B, T): KL(P||M)/2 +
    KL(Q||M)/2 with M = (P + Q)/2, in nats (at most log 2)."""
    logm = torch.logaddexp(logp, logq) - math.log(2)
    return 0.5 * ((logp.exp() * (logp - logm)).sum(-1)
                  + (logq.exp() * (logq - logm)).sum(-1)) * mask


def lpd_pdlp(nll_before, nll_after):
    """KGA's language-model probability distance and proportion of
    decreased probability, from per-text mean NLLs before and after:
    LPD = mean |PPL_before - PPL_after| (and relative to PPL_before),
    PDLP = fraction of texts whose perplexity went up."""
    before = np.exp(np.asarray(nll_before, dtype=float))
    after = np.exp(np.asarray(nll_after, dtype=float))
    return {'LPD': float(np.mean(np.abs(before - after))),
            'LPD_relative': float(np.mean(np.abs(before - after) / before)),
            'PDLP': float(np.mean(after > before))}
