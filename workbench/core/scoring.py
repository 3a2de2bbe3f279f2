"""Scoring: what a model's next-token predictions say about a text.

Token log-probabilities and hits (`token_stats`, `token_logprobs` with its
gradient), the vocabulary's log-distributions and KLs to fixed targets
(`vocab_logprobs`, `vocab_kl`, `token_kl`), log-probabilities of
continuations, greedy continuation, and memorization accuracy. Every
method's loss and every metric is built on these.

Where the output head is a separate frozen layer, the head runs over the
real positions a chunk at a time (`fast.head`); a model with a frozen
trunk, or inside a recorded training step, reads what is known
(`fast.trunk`, `fast.recorded`); greedy continuation reuses its KV cache
(`fast.kv`). None of it changes a number: each plain expression is here.
"""
import torch

from .data import right_padded, targets, used_width
from .fast.head import head_kl_sum, head_logprobs
from .fast.heap import measuring
from .fast.kv import cache_of, prompt_cached_logprobs, with_cache
from .fast.recorded import record, recorded_rows, recording
from .fast.trunk import trunk_of
from .logits import next_token, pad_to
from .models import decoder_and_head


def _device(model):
    return next(model.parameters()).device


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
    known = None if vocab_stats else recorded_rows(model, input_ids,
                                                   attention_mask)
    if known is not None:
        return known
    out = {k: [] for k in ('logprob', 'hit', 'mask', 'mu', 'sigma')}
    device = _device(model)
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
            stats, lse = next_token(logits, ids, am)
        for k, v in stats.items():
            out[k].append(v)
        if vocab_stats:
            mu, sigma = vocab_moments(logits, lse)
            out['mu'].append(mu)
            out['sigma'].append(sigma)
    back = torch.argsort(order)  # from length order to the caller's
    return {k: torch.cat([pad_to(t.cpu(), T - 1) for t in v])[back]
            for k, v in out.items() if v}


def vocab_moments(logits, lse, positions=64):
    """Mean and standard deviation of log p under p at every position of
    (B, T, V) logits with their logsumexp `lse` (B, T): Min-K%++'s mu and
    sigma. `positions` positions at a time, so the temporaries are that
    many rows of the vocabulary, not the batch's (five (B, T, V) tensors
    were the largest of a measurement); each position's sums are the
    same."""
    flat, flat_lse = logits.flatten(0, -2), lse.flatten()
    mu, sigma = flat.new_empty(len(flat)), flat.new_empty(len(flat))
    for i in range(0, len(flat), positions):
        logp = flat[i:i + positions] - flat_lse[i:i + positions, None]
        p = logp.exp()
        m = (p * logp).sum(-1)
        mu[i:i + positions] = m
        sigma[i:i + positions] = ((p * logp ** 2).sum(-1) - m ** 2
                                  ).clamp(min=1e-6).sqrt()
    return mu.view(lse.shape), sigma.view(lse.shape)


def _head_stats(decoder, head, ids, am):
    """`_next_token`'s statistics of one batch from the decoder's hidden
    states, the head applied a chunk of real positions at a time."""
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


@measuring
@torch.no_grad()
def continuation_logprobs(model, prompts, continuations, max_tokens=1024):
    """log p(c_j | prompt, c_<j) of every token of every continuation.

    `prompts` are token lists (at least one token); `continuations[i]` is a
    list of token lists, each continuing `prompts[i]`. Returns the same
    nesting with a 1-D tensor per continuation. Plainly: passes over whole
    rows (prompt followed by continuation), the logits computed from the
    first continuation position of the batch on. A model with a frozen
    trunk (`fast.trunk`) runs the rows' lower layers once however many
    models read them, so it takes this path; any other model encodes each
    prompt once, however many continuations it has
    (`fast.kv.prompt_cached_logprobs`: the same numbers, to rounding).
    """
    if trunk_of(model) is None:
        return prompt_cached_logprobs(model, prompts, continuations,
                                      max_tokens)
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
        x, am = right_padded(rows)
        T = x.shape[1]
        first = min(len(prompts[i]) for i, _ in chunk) - 1
        logits = model(input_ids=x.to(device), attention_mask=am.to(device),
                       logits_to_keep=T - first).logits.float()
        # logits[:, j] predicts token first + j + 1
        target = x[:, first + 1:].to(device)
        lp = (logits[:, :-1].gather(-1, target[..., None])[..., 0]
              - torch.logsumexp(logits[:, :-1], -1)).cpu()
        for r, (i, k) in enumerate(chunk):
            a = len(prompts[i]) - 1 - first  # predicts the continuation
            out[i][k] = lp[r, a:a + len(continuations[i][k])]
    return out


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


def vocab_logprobs(model, batch):
    """The model's next-token log-distribution at every target position of
    a batch, (B, W-1, V), and the mask of real targets (see
    `train.token_logprobs` for the trimming and masking)."""
    ids, am, mask = _trimmed(model, batch)
    logits = model(input_ids=ids, attention_mask=am).logits[:, :-1].float()
    if torch.is_grad_enabled():
        return torch.log_softmax(logits, -1), mask
    # measuring: written over the logits, the same numbers without a
    # second (B, W-1, V) tensor (157 MB for 8 people on SmolLM2)
    return torch.log_softmax(logits, -1, out=logits), mask


def _trimmed(model, batch):
    """A batch's ids and attention mask cut to its used width, on the
    model's device, and the mask of its real targets."""
    ids, am = batch['input_ids'], batch['attention_mask']
    width = used_width(am)
    device = next(model.parameters()).device
    ids, am = ids[:, :width].to(device), am[:, :width].to(device)
    return ids, am, am[:, 1:].bool() & am[:, :-1].bool()


def vocab_kl(model, batch, target_logprobs):
    """token_kl(target_logprobs, *vocab_logprobs(model, batch)), with its
    gradient, without the batch's (B, W-1, V) logits at once: the decoder
    runs over the whole batch, the output head over 128 positions at a
    time, again in the backward pass (`head_kl_sum`). The same value and
    gradient in the memory of those positions' logits (a 49k vocabulary
    makes the whole batch's most of an update's memory)."""
    parts = decoder_and_head(model)
    if parts is None:
        logp, mask = vocab_logprobs(model, batch)
        return token_kl(target_logprobs, logp, mask)
    decoder, head = parts
    ids, am, mask = _trimmed(model, batch)
    hidden = decoder(input_ids=ids,
                     attention_mask=am).last_hidden_state[:, :-1]
    target = target_logprobs[:, :mask.shape[1]].to(mask.device)[mask]
    return head_kl_sum(hidden[mask], head, target) / mask.sum().clamp(min=1)


def token_logprobs(model, batch):
    """log p(x_t | x_<t) of every target of a batch, (B, T-1), with the
    mask of the real targets: by the attention mask (and `target_mask` when
    the batch has one), never by token id, so a genuine EOS inside a text
    still counts. Positions outside the mask hold 0.

    With the output head frozen (LoRA), the decoder runs over the batch and
    the head over the masked positions only, a chunk at a time
    (`metrics.likelihood.head_logprobs`): no (B, T, V) logits, their
    log-softmax or their gradient are held, which were the largest
    tensors of a training step, and the gradient is the same to rounding.
    Inside `recorded_forward` every real position is scored, and recorded.
    """
    ids, am = batch['input_ids'], batch['attention_mask']
    device = next(model.parameters()).device
    ids, am = ids.to(device), am.to(device)
    mask = targets({**batch, 'attention_mask': am})
    parts = decoder_and_head(model)
    if parts is None or any(q.requires_grad for q in parts[1].parameters()):
        logits = model(input_ids=ids, attention_mask=am).logits
        # every position against the next token (the last against none), so
        # the logits go in as they are, not as a copy of all but the last
        target = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)
        logp = -torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), target.flatten(),
            reduction='none').view(ids.shape)[:, :-1]
        return logp * mask, mask
    decoder, head = parts
    hidden = decoder(input_ids=ids,
                     attention_mask=am).last_hidden_state[:, :-1]
    recorded = recording(model)
    real = targets({'attention_mask': am})  # every real target
    where = real if recorded else mask
    stats = scattered(where, *head_logprobs(hidden[where], head,
                                            ids[:, 1:][where]))
    logp = stats['logprob']
    if recorded:
        record(model, ids, am, {'logprob': logp.detach(), 'mask': real,
                                'hit': stats['hit']})
    return logp * mask, mask


def token_nll(model, batch):
    """Mean NLL over the real target tokens of a batch (see
    `token_logprobs`)."""
    logp, mask = token_logprobs(model, batch)
    return -(logp * mask).sum() / mask.sum().clamp(min=1)



@torch.no_grad()
def logprobs(model, batch, rows=4, dtype=torch.float32):
    """log p(. | x_<t) of `model` at every position of a batch, (B, W-1,
    V), with the (B, W-1) mask of real targets; computed `rows` at a time
    to bound the memory of the temporaries, and kept in `dtype` (float16
    halves the memory of a frozen target)."""
    width = used_width(batch['attention_mask'])
    batch = {k: batch[k][:, :width] for k in ('input_ids', 'attention_mask')}
    out = mask = None
    for i in range(0, batch['input_ids'].shape[0], rows):
        chunk = {k: v[i:i + rows] for k, v in batch.items()}
        lp, m = vocab_logprobs(model, chunk)
        if out is None:  # written chunk by chunk: no padded or joined copies
            n = batch['input_ids'].shape[0]
            out = lp.new_zeros((n, width - 1, lp.shape[-1]), dtype=dtype)
            mask = m.new_zeros((n, width - 1))
        out[i:i + rows, :lp.shape[1]] = lp
        mask[i:i + rows, :m.shape[1]] = m
        del lp
    return out, mask
