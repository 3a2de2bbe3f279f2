"""Memorisation metrics: MA, EL_n (Jang et al. 2023), Exact Memorization and
Extraction Strength (OpenUnlearning), and the forgetting thresholds.

EL_n needs, for every prefix x_<t, the greedy continuation of length T-t.
Two facts make it fast and still exact:
- greedy decoding is deterministic, so where the teacher-forced argmax at t
  equals x_t, the continuation from x_<t is x_t followed by the continuation
  from x_<t+1; only positions where the argmax misses need a generation;
- those generations start from prefixes of sequences whose keys and values
  one forward pass has already computed: each continues from its row's KV
  cache with the positions from its prefix length on masked out, so no
  prefix is ever encoded twice; they are batched and decoded plain greedy
  for a fixed length (no EOS stop, no EOS masking).
"""
import torch

from ..core.fast.kv import continue_rows
from ..core.scoring import greedy_continue, memorization_accuracy, token_stats


def _rows(input_ids, attention_mask):
    """Each sequence as a list of its real tokens (padding dropped)."""
    if attention_mask is None:
        return [r.tolist() for r in input_ids]
    return [r[m.bool()].tolist() for r, m in zip(input_ids, attention_mask)]


def ngrams(tokens, n):
    """The list of n-grams (tuples) of a token list."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def overlap(pred, true, n):
    """OVERLAP_n: share of the n-grams of `pred` found among those of `true`.

    As in the official code, divided by the number of n-grams of the true
    suffix (equal to that of `pred` when the lengths match).
    """
    true_grams = ngrams(true, n)
    if not true_grams:
        return 0.0
    found = set(true_grams)
    return sum(g in found for g in ngrams(pred, n)) / len(true_grams)


def _prefix_lengths(T, n, stride):
    """Prefix lengths t = 1..T-n that EL_n averages over (every `stride`)."""
    return list(range(1, T - n + 1, stride))


def _el(rows, continuations, n, stride):
    """EL_n per sequence from a function giving the continuation of x_<t."""
    scores = []
    for b, x in enumerate(rows):
        ts = _prefix_lengths(len(x), n, stride)
        if not ts:
            scores.append(0.0)
            continue
        scores.append(sum(overlap(continuations(b, t), x[t:], n)
                          for t in ts) / len(ts))
    return torch.tensor(scores)


def extraction_likelihood(model, input_ids, n=10, stride=1,
                          attention_mask=None, batch_size=64, stats=None):
    """EL_n per sequence (Jang et al. 2023), (B,).

    EL_n(x) = sum_{t=1}^{T-n} OVERLAP_n(f(x_<t), x_>=t) / (T-n), with f the
    greedy continuation of length T-t. `stride=1` is the paper's exact
    EL_n; a larger stride averages over every stride-th prefix only, a
    documented approximation. `stats` from `token_stats` (the same model
    and tokens) saves the teacher-forced pass.
    """
    rows = _rows(input_ids, attention_mask)
    hits = (stats or token_stats(model, input_ids, attention_mask))['hit']
    # first_miss[b][t]: the first position m >= t where the argmax misses
    jobs, first_miss = {}, []
    for b, x in enumerate(rows):
        T, fm = len(x), {}
        nxt = T
        for t in range(T - 1, 0, -1):
            if not hits[b, t - 1]:
                nxt = t
            fm[t] = nxt
        first_miss.append(fm)
        for t in _prefix_lengths(T, n, stride):
            if fm[t] < T:
                jobs[(b, fm[t])] = None
    keys = list(jobs)
    gens = continue_rows(model, input_ids, attention_mask,
                         [(b, m, len(rows[b]) - m) for b, m in keys],
                         batch_size)
    jobs = dict(zip(keys, gens))

    def continuation(b, t):
        m = first_miss[b][t]
        return rows[b][t:m] + (jobs[(b, m)] if m < len(rows[b]) else [])

    return _el(rows, continuation, n, stride)


def extraction_likelihood_naive(model, input_ids, n=10, stride=1,
                                attention_mask=None, pad_id=0):
    """EL_n by one greedy generation per prefix: the reference loop."""
    rows = _rows(input_ids, attention_mask)

    def continuation(b, t):
        x = rows[b]
        return greedy_continue(model, [x[:t]], [len(x) - t], pad_id)[0]

    return _el(rows, continuation, n, stride)


def exact_memorization(model, input_ids, attention_mask=None,
                       target_mask=None):
    """Exact Memorization (OpenUnlearning): teacher-forced token accuracy
    over the target tokens; the same quantity as MA."""
    return memorization_accuracy(model, input_ids, attention_mask,
                                 target_mask)


def extraction_strength(model, input_ids, attention_mask=None,
                        target_mask=None, stats=None):
    """Extraction Strength (OpenUnlearning), (B,).

    ES = 1 - k/L, with k the smallest offset such that the teacher-forced
    argmax predictions of every target token from k on are all correct.
    `stats` from `token_stats` saves the forward pass (as for MA).
    """
    s = stats or token_stats(model, input_ids, attention_mask)
    m = s['mask']
    if target_mask is not None:
        m = m & target_mask[:, 1:].bool()
    scores = []
    for hit, mm in zip(s['hit'], m):
        h = hit[mm].tolist()
        if not h:
            scores.append(0.0)
            continue
        k = len(h)
        while k > 0 and h[k - 1]:
            k -= 1
        # as in OpenUnlearning, whose search stops at k = L-1 at the latest
        k = min(k, len(h) - 1)
        scores.append(1 - k / len(h))
    return torch.tensor(scores)


def forgetting_thresholds(model, input_ids, attention_mask=None, n=10,
                          stride=1):
    """Jang et al.'s forgetting thresholds: mean EL_n and MA on unseen data.

    A forget set counts as forgotten once its mean EL_n and mean MA are
    both below these.
    """
    el = extraction_likelihood(model, input_ids, n, stride, attention_mask)
    ma = memorization_accuracy(model, input_ids, attention_mask)
    return {f'EL_{n}': el.mean().item(), 'MA': ma.mean().item()}
