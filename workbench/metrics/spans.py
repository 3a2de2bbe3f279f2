"""Span-level memorisation: S-MA and S-EL (Wang et al., AAAI 2025), and the
bookkeeping between character spans and token positions.

Spans are character offsets `[start, end]` in the text (what annotators and
the data files give); the metrics need token positions. A token belongs to
a span when its characters overlap it, so a span that starts inside a
token (" May" for "May 24, 1960") includes that token.
"""
import torch

from ..core.fast.kv import continue_rows
from ..core.scoring import memorization_accuracy, token_stats
from .extraction import overlap


def span_mask(tokenizer, texts, spans, width):
    """(B, width) mask of the tokens that overlap each text's spans.

    `spans[i]` is a list of `[start, end, ...]` character spans of
    `texts[i]`; the token positions match `data.tokenize` (right padding).
    """
    mask = torch.zeros((len(texts), width), dtype=torch.bool)
    for i, (text, ss) in enumerate(zip(texts, spans)):
        offsets = tokenizer(text, return_offsets_mapping=True)[
            'offset_mapping']
        for t, (a, b) in enumerate(offsets[:width]):
            mask[i, t] = any(a < s[1] and s[0] < b for s in ss)
    return mask


def runs(row_mask):
    """Maximal runs of True in a 1-D mask, as (start, end) token indices."""
    out, start = [], None
    for t, v in enumerate(row_mask.tolist() + [False]):
        if v and start is None:
            start = t
        elif not v and start is not None:
            out.append((start, t))
            start = None
    return out


def selective_memorization_accuracy(model, input_ids, attention_mask,
                                    mask, stats=None):
    """S-MA per sequence: MA over the sensitive token positions only, (B,).

    S-MA(x) = 1/|T_S| sum_{t in T_S} 1[argmax_v p(v | x_<t) = x_t]
    Position 0 has no prediction and never counts.
    """
    return memorization_accuracy(model, input_ids, attention_mask,
                                 target_mask=mask, stats=stats)


def selective_extraction_likelihood(model, input_ids, attention_mask, mask,
                                    n=2, stats=None):
    """S-EL_n per sequence, (B,): for each span s (a run of `mask`), the
    greedy continuation of |s| tokens from the prefix before it, scored by
    OVERLAP_n against the span; averaged over the spans of the sequence.

    S-EL_n(x) = 1/|S(x)| sum_{s in S(x)} OVERLAP_n(f(x_<b_s; |s|), x_{b_s..e_s})
    Spans shorter than n, and a span at position 0 (no prefix), are skipped;
    a sequence with no span left scores 0. While the teacher-forced argmax
    hits, the greedy continuation is the span itself; generation starts at
    the first miss (`stats` from `token_stats` save that pass).
    """
    hits = (stats or token_stats(model, input_ids, attention_mask))['hit']
    spans, jobs = [], []
    for b in range(input_ids.shape[0]):
        real = int(attention_mask[b].sum())
        for s, e in runs(mask[b, :real]):
            if s >= 1 and e - s >= n:
                m = s  # the first position the argmax misses
                while m < e and hits[b, m - 1]:
                    m += 1
                spans.append((b, s, e, m))
                if m < e:
                    jobs.append((b, m, e - m))
    gens = iter(continue_rows(model, input_ids, attention_mask, jobs))
    rows = input_ids.tolist()
    per = [[] for _ in rows]
    for b, s, e, m in spans:
        pred = rows[b][s:m] + (next(gens) if m < e else [])
        per[b].append(overlap(pred, rows[b][s:e], n))
    return torch.tensor([sum(v) / len(v) if v else 0.0 for v in per])


def char_precision_recall(predicted, true, length):
    """Character-level precision and recall of predicted spans against true
    spans of one text of `length` characters."""
    def cover(spans):
        c = [False] * length
        for s in spans:
            for k in range(s[0], min(s[1], length)):
                c[k] = True
        return c
    p, t = cover(predicted), cover(true)
    both = sum(a and b for a, b in zip(p, t))
    return both / max(1, sum(p)), both / max(1, sum(t))
