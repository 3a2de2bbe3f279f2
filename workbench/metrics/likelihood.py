"""Token log-likelihoods and what is built on them: perplexity, membership
inference (LOSS, zlib, Min-K%, Min-K%++, reference).

Membership-inference scores follow OpenUnlearning's convention: a higher
score means "looks less like a member", and the AUC labels the forget set 0
and the holdout set 1, so AUC = 1 when the forget set is far more likely
than the holdout set and 0.5 when they are indistinguishable. On Q&A pairs
(a `target_mask`) the attacks read the answers only, as OpenUnlearning's
do: LOSS, zlib and the reference attack average over every answer token
(with its EOS), Min-K% and Min-K%++ over the answer's own tokens
(`answer_mask`, the EOS left out, as OpenUnlearning's token-wise
log-probabilities leave it out).
"""
import math
import zlib

import numpy as np

from ..core.scoring import token_stats


def sequence_nll(model, input_ids, attention_mask=None, batch_size=None,
                 stats=None):
    """Mean negative log-likelihood per token of each sequence, (B,)."""
    s = stats or token_stats(model, input_ids, attention_mask, batch_size)
    m = s['mask'].float()
    return -(s['logprob'] * m).sum(1) / m.sum(1).clamp(min=1)


def perplexity(model, input_ids, attention_mask=None, batch_size=None,
               stats=None):
    """Corpus perplexity: exp of the mean NLL over all real tokens (no
    forward pass when `stats` from `token_stats` are given)."""
    s = stats or token_stats(model, input_ids, attention_mask, batch_size)
    m = s['mask'].float()
    return math.exp(-(s['logprob'] * m).sum().item() / m.sum().item())


def _min_k(values, mask, k):
    """Mean of the lowest `k` fraction of `values` where `mask`, per row."""
    scores = []
    for v, m in zip(values, mask):
        v = v[m].sort().values
        scores.append(v[:max(1, int(len(v) * k))].mean().item() if len(v)
                      else 0.0)
    return np.array(scores)


def _restricted(stats, mask):
    """`stats` whose real-target mask is narrowed to the (B, T) `mask`
    (None: unchanged)."""
    if mask is None:
        return stats
    return dict(stats, mask=stats['mask'] & mask[:, 1:].bool().to(
        stats['mask'].device))


def mia_scores(model, input_ids, attention_mask=None, attack='loss',
               k=0.4, texts=None, stats=None, target_mask=None,
               answer_mask=None, reference_stats=None):
    """Membership-inference scores per sequence (higher: less likely seen).

    `attack` is 'loss' (mean NLL), 'zlib' (mean NLL / zlib-compressed
    length of the text, needs `texts`), 'min_k' (minus the mean of the
    lowest k% token log-probabilities), 'min_k++' (the same on token
    log-probabilities normalised by the vocabulary's mean and std) or
    'ref' (mean NLL minus a reference model's, needs `reference_stats`,
    its `token_stats` of the same tokens). `target_mask` restricts the
    scores to the answers; `answer_mask`, where given, is what the
    per-token attacks read (see the module's docstring). `stats` from
    `token_stats` (with `vocab_stats` for 'min_k++') saves the forward
    pass.
    """
    s = stats or token_stats(model, input_ids, attention_mask,
                             vocab_stats=attack == 'min_k++')
    scored = _restricted(s, target_mask)
    per_token = _restricted(s, answer_mask if answer_mask is not None
                            else target_mask)['mask']
    nll = sequence_nll(model, input_ids, stats=scored)
    if attack == 'loss':
        return nll.numpy()
    if attack == 'zlib':
        if texts is None:
            raise ValueError("the 'zlib' attack needs the texts")
        z = np.array([len(zlib.compress(t.encode('utf-8'))) for t in texts])
        return nll.numpy() / np.maximum(z, 1)
    if attack == 'ref':
        if reference_stats is None:
            raise ValueError("the 'ref' attack needs a reference model's "
                             "token_stats")
        ref = sequence_nll(model, input_ids,
                           stats=_restricted(reference_stats, target_mask))
        return (nll - ref).numpy()
    if attack == 'min_k':
        return -_min_k(s['logprob'], per_token, k)
    if attack == 'min_k++':
        return -_min_k((s['logprob'] - s['mu']) / s['sigma'], per_token, k)
    raise ValueError(f'unknown attack {attack!r}')


def mia_auc(model, forget, holdout, attack='loss', k=0.4, stats=None,
            reference_stats=None):
    """AUC of an attack telling forget (0) from holdout (1) sequences.

    `forget` and `holdout` are dicts with `input_ids`, `attention_mask`
    and, where given, `target_mask`/`answer_mask` (`qa_batch`'s) and, for
    'zlib', `texts`; `stats`: their `token_stats`, if at hand;
    `reference_stats`: the reference model's, for 'ref'.
    """
    return mia_aucs(model, forget, holdout, (attack,), k, stats,
                    reference_stats)[attack]


def mia_aucs(model, forget, holdout, attacks=('loss', 'zlib', 'min_k'),
             k=0.4, stats=None, reference_stats=None):
    """`mia_auc` of several attacks from one forward pass per set (none
    when `stats`, the two sets' `token_stats`, are given)."""
    # scikit-learn (and SciPy under it) is imported where it is used: it
    # holds about 75 MB, which a notebook's training runs, before any
    # membership inference, would otherwise carry
    from sklearn.metrics import roc_auc_score
    vocab = 'min_k++' in attacks
    stats = stats or [token_stats(model, d['input_ids'], d['attention_mask'],
                                  vocab_stats=vocab)
                      for d in (forget, holdout)]
    refs = reference_stats or [None, None]
    out = {}
    for attack in attacks:
        f, h = (mia_scores(model, d['input_ids'], d['attention_mask'],
                           attack, k, d.get('texts'), stats=s,
                           target_mask=d.get('target_mask'),
                           answer_mask=d.get('answer_mask'),
                           reference_stats=r)
                for d, s, r in zip((forget, holdout), stats, refs))
        labels = np.r_[np.zeros(len(f)), np.ones(len(h))]
        out[attack] = float(roc_auc_score(labels, np.r_[f, h]))
    return out
