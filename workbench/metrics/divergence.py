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


class _HeadKL(torch.autograd.Function):
    """sum over positions of KL(target || softmax(h W^T + b)) for (N, d)
    hidden states h, the output head's (V, d) weight W and bias b, and (N,
    V) target log-distributions, computed `chunk` positions at a time and
    never held for all N: the backward pass recomputes each chunk's logits
    z, whose gradient is softmax(z) sum_v exp(t_v) - exp(t)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target_logp, chunk):
        ctx.save_for_backward(hidden, weight, bias, target_logp)
        ctx.chunk = chunk
        total = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, hidden.shape[0], chunk):
            z = torch.nn.functional.linear(hidden[i:i + chunk], weight,
                                           bias).float()
            logp = torch.log_softmax(z, -1)
            del z
            t = target_logp[i:i + chunk].float()  # may be the target itself
            # sum_v exp(t) (t - logp), in place in logp
            total += logp.neg_().add_(t).mul_(t.exp()).sum()
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, target_logp = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        for i in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[i:i + ctx.chunk]
            z = torch.nn.functional.linear(h, weight, bias).float()
            q = target_logp[i:i + ctx.chunk].float().exp()
            # softmax(z) sum(q) - q: a float16 target sums to 1 only nearly
            dz = torch.softmax(z, -1).mul_(q.sum(-1, keepdim=True)).sub_(
                q).mul_(grad).to(weight.dtype)
            if need_h:
                grad_h[i:i + ctx.chunk] = (dz @ weight).to(hidden.dtype)
            if need_w:  # a trainable head (or embeddings tied to it)
                grad_w += dz.T @ h.to(weight.dtype)
            if need_b:
                grad_b += dz.sum(0)
        return grad_h, grad_w, grad_b, None, None


def head_kl_sum(hidden, head, target_logp, chunk=128):
    """The sum of KL(target || model) over positions whose (N, d) last
    hidden states are `hidden`, the model's logits being `head(hidden)`
    (a linear layer): as `token_kl` of the log-softmax of those logits
    (a sum, not a mean), with its gradient, in the memory of `chunk`
    positions' logits instead of all N."""
    return _HeadKL.apply(hidden, head.weight, head.bias, target_logp, chunk)


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
