"""Divergences between next-token distributions, and KGA's evaluation.

`token_kl` (from the core's scoring, where the methods take it) is the
training signal of the distillation methods (the leave-one-out ensemble,
KGA); `token_jsd` and `lpd_pdlp` are KGA's measures of how close an
unlearned model is to one retrained without the forget set.
"""
import math

import numpy as np
import torch

from ..core.scoring import token_kl  # noqa: F401 (the metrics read it here)


def token_jsd(logp, logq, mask):
    """Jensen-Shannon divergence per position, (B, T): KL(P||M)/2 +
    KL(Q||M)/2 with M = (P + Q)/2, in nats (at most log 2).

    One row of the batch at a time, so the temporaries are one text's
    (T, V) tensors, not the batch's; a float16 `logq` (a held reference)
    is used in `logp`'s precision."""
    out = logp.new_empty(logp.shape[:-1])
    for i in range(logp.shape[0]):
        p, q = logp[i], logq[i].to(logp.dtype)
        logm = torch.logaddexp(p, q) - math.log(2)
        out[i] = 0.5 * ((p.exp() * (p - logm)).sum(-1)
                        + (q.exp() * (q - logm)).sum(-1))
    return out * mask


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
