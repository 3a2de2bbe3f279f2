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

from .. import measuring
from .likelihood import (_device, cache_of, rows_cache, token_stats,
                         with_cache)


def _rows(input_ids, attention_mask):
    """Each sequence as a list of its real tokens (padding dropped)."""
    if attention_mask is None:
        return [r.tolist() for r in input_ids]
    return [r[m.bool()].tolist() for r, m in zip(input_ids, attention_mask)]


def memorization_accuracy(model, input_ids, attention_mask=None,
                          target_mask=None, stats=None):
    """MA per sequence: mean over t of 1[argmax p(.|x_<t) = x_t], (B,).

    One teacher-forced forward pass (none when `stats` from `token_stats`
    are given). `target_mask` (B, T) optionally restricts the positions t
    that count (S-MA uses the sensitive spans).
    """
    s = stats or token_stats(model, input_ids, attention_mask)
    m = s['mask']
    if target_mask is not None:
        m = m & target_mask[:, 1:].bool()
    return (s['hit'] & m).sum(1) / m.sum(1).clamp(min=1)


@measuring
@torch.no_grad()
def greedy_continue(model, prefixes, lengths, pad_id=0, batch_size=32,
                    stop=None):
    """Greedy continuation of each prefix for exactly `lengths[i]` tokens;
    with `stop`, a function of the (B, t) tokens generated so far that
    says which rows are done ((B,) bools), a row ends where it is done.

    Left-padded batches with the KV cache; sequences of similar length are
    batched together. A batch ends when all of its rows are done.
    """
    device = _device(model)
    out = [None] * len(prefixes)
    order = sorted(range(len(prefixes)),
                   key=lambda i: (-lengths[i], -len(prefixes[i])))
    for c in range(0, len(order), batch_size):
        chunk = order[c:c + batch_size]
        width = max(len(prefixes[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, i in enumerate(chunk):
            ids[j, width - len(prefixes[i]):] = torch.tensor(prefixes[i])
            mask[j, width - len(prefixes[i]):] = 1
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        # logits of the last position only: the full (B, T, V) tensor of a
        # 49k vocabulary would dominate memory
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos,
                    use_cache=True, logits_to_keep=1)
        tokens = [res.logits[:, -1].argmax(-1)]
        ends = [lengths[i] for i in chunk]  # tokens kept of each row
        while True:
            t = len(tokens)
            if stop is not None:
                done = stop(torch.stack(tokens, dim=1).cpu()).tolist()
                ends = [min(e, t) if d else e for e, d in zip(ends, done)]
            if all(e <= t for e in ends):
                break
            mask = torch.cat([mask, mask.new_ones((len(chunk), 1))], dim=1)
            pos = pos[:, -1:] + 1
            res = model(input_ids=tokens[-1][:, None], attention_mask=mask,
                        position_ids=pos, use_cache=True,
                        **with_cache(model, cache_of(res)))
            tokens.append(res.logits[:, -1].argmax(-1))
        gen = torch.stack(tokens, dim=1).cpu()
        for j, i in enumerate(chunk):
            out[i] = gen[j, :ends[j]].tolist()
    return out


@measuring
@torch.no_grad()
def continue_rows(model, input_ids, attention_mask, jobs, batch_size=64,
                  max_tokens=12288):
    """Greedy continuations of prefixes of the given rows, (jobs,) lists.

    A job (b, m, n) continues x_b[:m] for exactly n tokens (m >= 1; rows
    right-padded, as `data.tokenize` pads them). The rows' keys and values
    come from one forward pass; each job copies its row's cache, masks the
    positions m-1 onwards, feeds x_{m-1} at position m-1 (its output is the
    first token) and decodes greedily. Keys and values before m depend on
    x_<m only, so this is the continuation of x_<m, without encoding the
    prefix again for every job. Jobs leave the batch as they finish; a
    batch holds at most `batch_size` jobs and about `max_tokens` cached
    positions (the cache is the memory that grows; the default holds the
    EL_10 jobs of 8 people at stride 10 in one batch, where a second batch
    would decode its few short jobs at almost the cost of a full one).
    """
    device = _device(model)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    out = [None] * len(jobs)
    rows = sorted({b for b, _, _ in jobs})
    per_pass = max(1, max_tokens // max(1, input_ids.shape[1]))
    for g in range(0, len(rows), per_pass):
        group = rows[g:g + per_pass]
        where = {b: i for i, b in enumerate(group)}
        width = int(attention_mask[group].sum(1).max())
        ids = input_ids[group, :width].to(device)
        am = attention_mask[group, :width].to(device)
        cache = cache_of(model(input_ids=ids, attention_mask=am,
                               use_cache=True, logits_to_keep=1))
        mine = sorted((j for j, (b, _, _) in enumerate(jobs) if b in where),
                      key=lambda j: -jobs[j][2])
        longest = max((jobs[j][2] for j in mine), default=0)
        size = max(1, min(batch_size, max_tokens // (width + longest)))
        for c in range(0, len(mine), size):
            chunk = mine[c:c + size]
            idx = torch.tensor([where[jobs[j][0]] for j in chunk],
                               device=device)
            m = torch.tensor([jobs[j][1] for j in chunk], device=device)
            # one copy of its row's cache per job, each appending its own
            # tokens, with room for the longest continuation of the chunk
            past = None if cache is None else rows_cache(
                cache, idx, max(jobs[j][2] for j in chunk))
            mask = (torch.arange(width, device=device)[None]
                    < (m - 1)[:, None]).long()
            token = ids[idx, m - 1]
            pos = (m - 1)[:, None]
            left = torch.tensor([jobs[j][2] for j in chunk], device=device)
            live = list(chunk)  # jobs still decoding, longest first
            tokens = {j: [] for j in chunk}
            while live:
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], 1)
                res = model(input_ids=token[:, None], attention_mask=mask,
                            position_ids=pos, use_cache=True,
                            **with_cache(model, past))
                past = cache_of(res)
                token = res.logits[:, -1].argmax(-1)
                for k, t in enumerate(token.tolist()):
                    tokens[live[k]].append(t)
                pos, left = pos + 1, left - 1
                keep = (left > 0).nonzero()[:, 0]
                if len(keep) < len(live):  # finished jobs leave the batch
                    live = [live[k] for k in keep.tolist()]
                    mask, pos, left = mask[keep], pos[keep], left[keep]
                    token = token[keep]
                    if past is not None and live:
                        past.batch_select_indices(keep)
            for j in chunk:
                out[j] = tokens[j]
    return out


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
