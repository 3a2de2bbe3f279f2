"""Token log-likelihoods and what is built on them: perplexity, membership
inference (LOSS, zlib, Min-K%, Min-K%++).

Membership-inference scores follow OpenUnlearning's convention: a higher
score means "looks less like a member", and the AUC labels the forget set 0
and the holdout set 1, so AUC = 1 when the forget set is far more likely
than the holdout set and 0.5 when they are indistinguishable.
"""
import copy
import functools
import inspect
import math
import zlib
from contextlib import contextmanager

import numpy as np
import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

from .. import measuring


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
def token_stats(model, input_ids, attention_mask=None, batch_size=None,
                vocab_stats=False, max_tokens=512):
    """Per-position statistics of next-token prediction, in batches.

    Returns a dict of (B, T-1) tensors aligned with targets `x_1..x_{T-1}`:
    `logprob` (log p(x_t | x_<t)), `hit` (argmax equals x_t) and `mask`
    (the target is a real token); with `vocab_stats`, also `mu` and `sigma`,
    the mean and standard deviation of log p under p (for Min-K%++).

    Batches hold about `max_tokens` tokens (or `batch_size` rows). Rows go
    through in order of length, each batch cut to its longest row, so a
    short text is not padded to the longest of the set. Without
    `vocab_stats`, where the logits are the output head applied to the
    decoder's last hidden states, the head scores the real positions
    `head_logprobs`' chunk at a time: no (rows, T, vocabulary) logits are
    held, which were the largest tensors of a measurement (and positions
    outside the mask hold 0).
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    known = None if vocab_stats else _recorded_rows(model, input_ids,
                                                    attention_mask)
    if known is not None:
        return known
    out = {k: [] for k in ('logprob', 'hit', 'mask', 'mu', 'sigma')}
    device = _device(model)
    from ..models import decoder_and_head
    parts = None if vocab_stats else decoder_and_head(model)
    T = input_ids.shape[1]
    # the width a row needs: up to its last real token
    widths = torch.where(attention_mask.any(1),
                         T - attention_mask.flip(1).int().argmax(1), 1)
    order = torch.argsort(widths, stable=True)
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (
                stop - start < batch_size if batch_size else
                (stop + 1 - start) * widths[order[stop]] <= max_tokens):
            stop += 1
        rows = order[start:start + (batch_size or stop - start)]
        start += len(rows)
        width = int(widths[rows].max())
        ids = input_ids[rows, :width].to(device)
        am = attention_mask[rows, :width].to(device)
        if parts is not None:
            stats = _head_stats(*parts, ids, am)
        else:
            logits = model(input_ids=ids, attention_mask=am).logits[:, :-1]
            logits = logits.float()
            stats, lse = _next_token(logits, ids, am)
        for k, v in stats.items():
            out[k].append(v)
        if vocab_stats:
            logp = logits - lse[..., None]
            p = logp.exp()
            mu = (p * logp).sum(-1)
            out['mu'].append(mu)
            out['sigma'].append(((p * logp ** 2).sum(-1) - mu ** 2)
                                .clamp(min=1e-6).sqrt())
    back = torch.argsort(order)  # from length order to the caller's
    return {k: torch.cat([_pad_to(t.cpu(), T - 1) for t in v])[back]
            for k, v in out.items() if v}


def _next_token(logits, ids, am):
    """`logprob`, `hit` and `mask` of one batch from its float logits of
    positions 0..T-2, and logsumexp(z) of each position."""
    target = ids[:, 1:]
    # log p(x_t) = z_t - logsumexp(z), without a second (B, T, V) tensor
    lse = torch.logsumexp(logits, dim=-1)
    return {'logprob': logits.gather(-1, target[..., None])[..., 0] - lse,
            'hit': logits.argmax(-1) == target,
            'mask': am[:, 1:].bool() & am[:, :-1].bool()}, lse


def _head_stats(decoder, head, ids, am):
    """`_next_token`'s statistics of one batch from the decoder's hidden
    states, the head applied a chunk of real positions at a time."""
    from ..data import targets
    hidden = decoder(input_ids=ids, attention_mask=am).last_hidden_state
    mask = targets({'attention_mask': am})
    lp, hit = head_logprobs(hidden[:, :-1][mask], head, ids[:, 1:][mask])
    return {**scattered(mask, lp, hit), 'mask': mask}


def scattered(where, logprob, hit):
    """(B, T-1) `logprob` and `hit` from their values at the positions of
    the mask `where` (as `head_logprobs` gives them); 0 elsewhere."""
    return {'logprob': torch.zeros(where.shape, dtype=logprob.dtype,
                                   device=logprob.device)
            .masked_scatter(where, logprob),
            'hit': torch.zeros_like(where).masked_scatter(where, hit)}


def _head_chunks(hidden, weight, bias, target, chunk, jacobian):
    """log p(y) and whether y is the argmax at N positions whose last
    hidden states are `hidden` (N, d), for the head's (V, d) weight and
    bias and the (N,) targets y, `chunk` positions' logits at a time; with
    `jacobian`, also d log p(y) / dh = (onehot(y) - softmax(z)) W, (N, d)."""
    n = hidden.shape[0]
    logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
    hit = torch.empty(n, dtype=torch.bool, device=hidden.device)
    jac = torch.empty_like(hidden) if jacobian else None
    for i in range(0, n, chunk):
        y = target[i:i + chunk]
        z = torch.nn.functional.linear(hidden[i:i + chunk], weight,
                                       bias).float()
        hit[i:i + chunk] = z.argmax(-1) == y
        z_y = z.gather(-1, y[:, None])[:, 0]
        # logsumexp(z) with exp(z - max) in place: one (chunk, V) tensor
        top = z.amax(-1, keepdim=True)
        total = z.sub_(top).exp_().sum(-1, keepdim=True)
        logp[i:i + chunk] = z_y - (top + total.log())[:, 0]
        if jacobian:
            # softmax(z) - onehot(y), in float32 (as the gradient of a
            # cross-entropy is), then through the head
            dz = z.div_(total)
            dz[torch.arange(len(y), device=dz.device), y] -= 1
            jac[i:i + chunk] = (dz.to(weight.dtype) @ weight).neg_().to(
                hidden.dtype)
    return logp, hit, jac


class _HeadLogprob(torch.autograd.Function):
    """`head_logprobs` with its gradient for the hidden states (the head
    frozen). log p(y) at a position depends on that position's hidden
    state only, so its gradient is one d-vector per position, computed in
    the forward pass from the same chunk of logits: the backward pass
    scales it, and no (N, V) tensor is ever kept."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk):
        logp, hit, jac = _head_chunks(hidden, weight, bias, target, chunk,
                                      jacobian=True)
        ctx.save_for_backward(jac)
        ctx.mark_non_differentiable(hit)
        return logp, hit

    @staticmethod
    def backward(ctx, grad, _):
        jac, = ctx.saved_tensors
        return grad[:, None].to(jac.dtype) * jac, None, None, None, None


def head_logprobs(hidden, head, target, chunk=128):
    """log p(y) of the targets (N,) at positions whose last hidden states
    are `hidden` (N, d), the logits being `head(hidden)` (a linear layer),
    and whether each target is the argmax: the numbers of a log-softmax of
    the whole (N, V) logits, in the memory of `chunk` positions' logits.
    With gradients on, the head must be frozen (a LoRA model's is); the
    gradient for `hidden` is that of the plain expression, to rounding."""
    if torch.is_grad_enabled() and hidden.requires_grad:
        if head.weight.requires_grad or (head.bias is not None
                                         and head.bias.requires_grad):
            raise ValueError('head_logprobs computes no gradient for the '
                             'head; train it through the full logits')
        return _HeadLogprob.apply(hidden, head.weight, head.bias, target,
                                  chunk)
    logp, hit, _ = _head_chunks(hidden, head.weight, head.bias, target,
                                chunk, jacobian=False)
    return logp, hit


def _pad_to(t, width):
    """Right-pad a (B, w) tensor with zeros (False) to (B, width)."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))


_known = {}  # id(model) -> {row key: its token statistics} (`known_stats`)


def _row_key(ids, am):
    """A right-padded row, up to its last real token, as plain data."""
    w = int(am.nonzero().max()) + 1 if am.any() else 1
    return tuple(ids[:w].tolist()), tuple(am[:w].tolist())


def _adapters(model):
    """What decides `model`'s forward pass besides its weights: the active
    adapters and whether they are switched off (`models.reference`)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    for m in model.modules():
        if isinstance(m, BaseTunerLayer):
            return tuple(m.active_adapters), m.disable_adapters
    return None


def _dropout_active(model):
    """Whether a forward pass of `model` now drops activations at random
    (then it is not the model's own prediction, and is not recorded)."""
    if not model.training:
        return False
    config = getattr(model, 'config', None)
    return (getattr(config, 'attention_dropout', 0) or 0) > 0 or any(
        isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())


_recordings = {}  # id(model) -> the row dicts `recorded_forward` fills


def recording(model):
    """Whether a forward pass of `model` now is recorded: inside
    `recorded_forward`, with gradients on and no dropout (else it is not
    the prediction a measurement of these weights would make)."""
    return (bool(_recordings.get(id(model))) and torch.is_grad_enabled()
            and not _dropout_active(model))


def record(model, ids, am, stats):
    """Add the (B, T-1) token statistics of a forward pass of `model` over
    `ids` to the recordings open on it (`recorded_forward`); a pass that
    computes them without calling the model (`train.token_logprobs`)
    records them here."""
    if not recording(model):
        return
    state = _adapters(model)
    for b in range(ids.shape[0]):
        key = _row_key(ids[b].cpu(), am[b].cpu())
        w = len(key[0]) - 1
        row = {k: v[b, :w].detach().cpu() for k, v in stats.items()}
        for rows in _recordings[id(model)]:
            rows[state, key] = row


@contextmanager
def recorded_forward(model):
    """Record the token statistics of `model`'s forward passes with
    gradients (a training step's) while inside; yields {row key: stats}.

    The logits of a training step's forward pass are those a measurement of
    the same weights would compute (no dropout, or nothing is recorded), so
    an evaluation of these weights can read them (`known_stats`) instead of
    running a forward pass of its own.
    """
    rows = {}

    def hook(module, args, kwargs, output):
        ids = kwargs.get('input_ids', args[0] if args else None)
        logits = getattr(output, 'logits', None)
        if ids is None or logits is None or not recording(model):
            return
        am = kwargs.get('attention_mask')
        am = torch.ones_like(ids) if am is None else am
        with torch.no_grad():
            stats, _ = _next_token(logits[:, :-1].detach().float(), ids, am)
        record(model, ids, am, stats)

    _recordings.setdefault(id(model), []).append(rows)
    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()
        open_ = [r for r in _recordings[id(model)] if r is not rows]
        if open_:
            _recordings[id(model)] = open_
        else:
            del _recordings[id(model)]


@contextmanager
def known_stats(model, rows):
    """Inside, `token_stats(model, ...)` of texts whose every row is in
    `rows` (from `recorded_forward`, at the weights `model` has now) returns
    them instead of running a forward pass."""
    previous = _known.get(id(model))
    _known[id(model)] = rows
    try:
        yield
    finally:
        if previous is None:
            _known.pop(id(model), None)
        else:
            _known[id(model)] = previous


def _recorded_rows(model, input_ids, attention_mask):
    """`token_stats` of these rows from `known_stats`, or None."""
    rows = _known.get(id(model))
    if not rows:
        return None
    state = _adapters(model)  # an adapter switched since: not these rows
    found = [rows.get((state, _row_key(i, a)))
             for i, a in zip(input_ids.cpu(), attention_mask.cpu())]
    if any(r is None for r in found):
        return None
    T = input_ids.shape[1]
    return {k: torch.stack([_pad_to(r[k][None], T - 1)[0] for r in found])
            for k in ('logprob', 'hit', 'mask')}


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
        scores.append(v[:max(1, int(len(v) * k))].mean().item())
    return np.array(scores)


def mia_scores(model, input_ids, attention_mask=None, attack='loss',
               k=0.4, texts=None, stats=None):
    """Membership-inference scores per sequence (higher: less likely seen).

    `attack` is 'loss' (mean NLL), 'zlib' (mean NLL / zlib-compressed
    length of the text, needs `texts`), 'min_k' (minus the mean of the
    lowest k% token log-probabilities) or 'min_k++' (the same on token
    log-probabilities normalised by the vocabulary's mean and std).
    `stats` from `token_stats` (with `vocab_stats` for 'min_k++') saves
    the forward pass.
    """
    s = stats or token_stats(model, input_ids, attention_mask,
                             vocab_stats=attack == 'min_k++')
    m = s['mask']
    nll = sequence_nll(model, input_ids, stats=s)
    if attack == 'loss':
        return nll.numpy()
    if attack == 'zlib':
        if texts is None:
            raise ValueError("the 'zlib' attack needs the texts")
        z = np.array([len(zlib.compress(t.encode('utf-8'))) for t in texts])
        return nll.numpy() / np.maximum(z, 1)
    if attack == 'min_k':
        return -_min_k(s['logprob'], m, k)
    if attack == 'min_k++':
        return -_min_k((s['logprob'] - s['mu']) / s['sigma'], m, k)
    raise ValueError(f'unknown attack {attack!r}')


def mia_auc(model, forget, holdout, attack='loss', k=0.4, stats=None):
    """AUC of an attack telling forget (0) from holdout (1) sequences.

    `forget` and `holdout` are dicts with `input_ids`, `attention_mask`
    and, for 'zlib', `texts`; `stats`: their `token_stats`, if at hand.
    """
    return mia_aucs(model, forget, holdout, (attack,), k, stats)[attack]


def mia_aucs(model, forget, holdout, attacks=('loss', 'zlib', 'min_k'),
             k=0.4, stats=None):
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
    out = {}
    for attack in attacks:
        f, h = (mia_scores(model, d['input_ids'], d['attention_mask'],
                           attack, k, d.get('texts'), stats=s)
                for d, s in zip((forget, holdout), stats))
        labels = np.r_[np.zeros(len(f)), np.ones(len(h))]
        out[attack] = float(roc_auc_score(labels, np.r_[f, h]))
    return out


@measuring
@torch.no_grad()
def continuation_logprobs(model, prompts, continuations, max_tokens=1024):
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
    length times the number of continuations per prompt. A model with a
    frozen trunk scores whole rows instead, which the trunk makes cheaper
    (`_whole_rows_logprobs`).
    """
    from ..trunk import trunk_of
    if trunk_of(model) is not None:
        return _whole_rows_logprobs(model, prompts, continuations, max_tokens)
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
            x, xm = (t.to(device) for t in _right_padded(seqs))
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


def _whole_rows_logprobs(model, prompts, continuations, max_tokens=1024):
    """`continuation_logprobs` by passes over whole rows (prompt followed
    by continuation), for a model with a frozen trunk (`workbench.trunk`):
    the rows' lower layers run once however many models read them, so
    encoding a prompt again for each continuation costs the top layers
    only. Logits are computed from the first continuation position of the
    batch on."""
    device = _device(model)
    jobs = sorted(((i, k) for i in range(len(prompts))
                   for k in range(len(continuations[i]))),
                  key=lambda t: (len(prompts[t[0]])
                                 + len(continuations[t[0]][t[1]])))
    out = [[None] * len(c) for c in continuations]
    start = 0
    while start < len(jobs):
        stop = start + 1
        while stop < len(jobs):
            i, k = jobs[stop]
            if (stop + 1 - start) * (len(prompts[i])
                                     + len(continuations[i][k])) > max_tokens:
                break
            stop += 1
        chunk = jobs[start:stop]
        start = stop
        rows = [prompts[i] + continuations[i][k] for i, k in chunk]
        x, am = _right_padded(rows)
        T = x.shape[1]
        first = min(len(prompts[i]) for i, _ in chunk) - 1
        logits = model(input_ids=x.to(device), attention_mask=am.to(device),
                       logits_to_keep=T - first).logits.float()
        # logits[:, j] predicts token first + j + 1
        targets = x[:, first + 1:].to(device)
        lp = (logits[:, :-1].gather(-1, targets[..., None])[..., 0]
              - torch.logsumexp(logits[:, :-1], -1)).cpu()
        for r, (i, k) in enumerate(chunk):
            a = len(prompts[i]) - 1 - first  # predicts the continuation
            out[i][k] = lp[r, a:a + len(continuations[i][k])]
    return out


def _right_padded(seqs):
    """Token lists as a right-padded (B, T) batch (zeros) and its mask."""
    x = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
    mask = torch.zeros_like(x)
    for r, seq in enumerate(seqs):
        x[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    return x, mask
