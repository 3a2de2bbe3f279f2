"""KV-cache reuse. Changes no number: the plain computations are
`scoring.greedy_continue` (a prefix at a time) and
`scoring.continuation_logprobs` (whole rows).

- `rows_cache`: copies of some rows of a prefilled cache, with room for
  the tokens still to come, written in place instead of concatenated;
- `continue_rows`: greedy continuations of many prefixes of the same rows
  from one forward pass over the rows (extraction likelihood's jobs);
- `prompt_cached_logprobs`: each prompt encoded once however many
  continuations are scored after it (truth ratios, answer probability).
"""
import copy
import functools
import inspect

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from ..data import right_padded
from .heap import measuring


def _device(model):
    return next(model.parameters()).device



@functools.lru_cache(maxsize=None)
def _cache_name(cls):
    params = inspect.signature(cls.forward).parameters
    return 'cache' if 'cache' in params else 'past_key_values'


def with_cache(model, cache):
    """The keyword that hands `cache` to `model`'s forward pass: `cache`
    where the model takes it (transformers 5.2x renamed it), else
    `past_key_values`."""
    base = (model.get_base_model() if hasattr(model, 'get_base_model')
            else model)
    return {_cache_name(type(base)): cache}


def cache_of(output):
    """The KV cache a forward pass returned (under either name)."""
    cache = getattr(output, 'cache', None)
    return cache if cache is not None else getattr(output,
                                                   'past_key_values', None)


class _RoomyLayer(DynamicLayer):
    """A cache layer preallocated for `room` more positions.

    A `DynamicLayer` concatenates at every step, which allocates and copies
    the whole cache each time (and, on CPU, faults in its pages afresh);
    this one writes new keys and values in place and hands attention a view
    of the filled part, the same values in the same shape.
    """

    def __init__(self, keys, values, room):
        super().__init__()
        b, h, n, _ = keys.shape
        self._k = keys.new_empty((b, h, n + room, keys.shape[-1]))
        self._v = values.new_empty((b, h, n + room, values.shape[-1]))
        self._k[:, :, :n], self._v[:, :, :n] = keys, values
        self.length, self.device, self.is_initialized = n, keys.device, True
        self._view()

    def _view(self):
        self.keys = self._k[:, :, :self.length]
        self.values = self._v[:, :, :self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if self.length + n > self._k.shape[2]:
            raise ValueError('the cache has no room for more positions')
        self._k[:, :, self.length:self.length + n] = key_states
        self._v[:, :, self.length:self.length + n] = value_states
        self.length += n
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices):
        k = len(indices)
        if torch.equal(indices.cpu(), torch.arange(k)):  # the first k rows:
            self._k, self._v = self._k[:k], self._v[:k]  # a view, no copy
        else:
            self._k, self._v = self._k[indices], self._v[indices]
        self._view()

    reorder_cache = batch_select_indices  # the buffers move with the rows


def rows_cache(cache, rows, room):
    """A new cache holding rows `rows` of `cache` (a `DynamicCache` after a
    prefill), with room for `room` more positions per row. Layers of other
    kinds (a sliding window, say) are copied as they are."""
    if not all(type(layer) is DynamicLayer for layer in cache.layers):
        out = copy.deepcopy(cache)
        out.reorder_cache(rows)
        return out
    out = DynamicCache()
    out.layers = [_RoomyLayer(layer.keys[rows], layer.values[rows], room)
                  for layer in cache.layers]
    return out


@measuring
@torch.no_grad()
def continue_rows(model, input_ids, attention_mask, jobs, batch_size=64,
                  max_tokens=6144):
    """Greedy continuations of prefixes of the given rows, (jobs,) lists.

    A job (b, m, n) continues x_b[:m] for exactly n tokens (m >= 1; rows
    right-padded, as `data.tokenize` pads them). The rows' keys and values
    come from one forward pass; each job copies its row's cache, masks the
    positions m-1 onwards, feeds x_{m-1} at position m-1 (its output is the
    first token) and decodes greedily. Keys and values before m depend on
    x_<m only, so this is the continuation of x_<m, without encoding the
    prefix again for every job. Jobs leave the batch as they finish; a
    batch holds at most `batch_size` jobs and about `max_tokens` cached
    positions (the cache is the memory that grows: 6144 positions of
    SmolLM2-135M's are 270 MiB in float32, which keeps a measurement inside
    Binder's 2 GiB; 8 unlearned people's EL_10 on 2 cores took 29 s with
    it and 23-29 s with twice as many).
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


@measuring
@torch.no_grad()
def prompt_cached_logprobs(model, prompts, continuations, max_tokens=1024):
    """log p(c_j | prompt, c_<j) of every token of every continuation, with
    each prompt encoded once however many continuations it has.

    `prompts` are token lists (at least one token); `continuations[i]` is a
    list of token lists, each continuing `prompts[i]`. Returns the same
    nesting with a 1-D tensor per continuation. The prompts but for their
    last token go through the model once (right-padded); each continuation
    then copies its prompt's keys and values, with the padding masked, and
    runs its prompt's last token followed by its own tokens at their true
    positions. The numbers are those of one pass over prompt + continuation
    (up to float rounding); the compute shrinks by about the prompt's
    length times the number of continuations per prompt
    (`scoring.continuation_logprobs` is the plain computation).
    """
    device = _device(model)
    out = [[None] * len(c) for c in continuations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    width = max(len(p) for p in prompts) - 1
    per_pass = max(1, max_tokens // max(1, width))
    for g in range(0, len(order), per_pass):
        group = order[g:g + per_pass]
        w = max(len(prompts[i]) for i in group) - 1
        ids = torch.zeros((len(group), w), dtype=torch.long)
        am = torch.zeros_like(ids)
        for j, i in enumerate(group):
            ids[j, :len(prompts[i]) - 1] = torch.tensor(prompts[i][:-1])
            am[j, :len(prompts[i]) - 1] = 1
        ids, am = ids.to(device), am.to(device)
        cache = None
        if w > 0:
            cache = cache_of(model(input_ids=ids, attention_mask=am,
                                   use_cache=True, logits_to_keep=1))
        jobs = sorted(((j, i, k) for j, i in enumerate(group)
                       for k in range(len(continuations[i]))),
                      key=lambda t: len(continuations[t[1]][t[2]]))
        longest = max(1 + len(continuations[i][k]) for _, i, k in jobs)
        size = max(1, max_tokens // (w + longest))
        for c in range(0, len(jobs), size):
            chunk = jobs[c:c + size]
            seqs = [[prompts[i][-1], *continuations[i][k]]
                    for _, i, k in chunk]
            L = max(map(len, seqs))
            x, xm = (t.to(device) for t in right_padded(seqs))
            rows = torch.tensor([j for j, _, _ in chunk], device=device)
            start = torch.tensor([len(prompts[i]) - 1 for _, i, _ in chunk],
                                 device=device)
            past = None if cache is None else rows_cache(cache, rows, L)
            logits = model(input_ids=x,
                           attention_mask=torch.cat([am[rows], xm], 1),
                           position_ids=start[:, None] + torch.arange(
                               L, device=device),
                           **with_cache(model, past)).logits[:, :-1].float()
            lp = (logits.gather(-1, x[:, 1:, None])[..., 0]
                  - torch.logsumexp(logits, -1)).cpu()
            for r, (_, i, k) in enumerate(chunk):
                out[i][k] = lp[r, :len(seqs[r]) - 1]
    return out
