"""A training step's forward pass, handed to the evaluation of the same
weights. Changes no number.

Full-batch gradient ascent evaluates the forget set after every step, and
its next step's forward pass computes the very token statistics that
evaluation needs (no dropout, the same weights). Inside
`recorded_forward` a training step's statistics are kept per row; inside
`known_stats` `scoring.token_stats` returns them instead of running a
forward pass of its own. What is recorded hangs on the model object (a
weak reference: it goes with the model).
"""
import weakref
from contextlib import contextmanager

import torch

from ..logits import next_token, pad_to


_known = weakref.WeakKeyDictionary()  # model -> {row key: stats}


def row_key(ids, am):
    """A right-padded row, up to its last real token, as plain data."""
    w = int(am.nonzero().max()) + 1 if am.any() else 1
    return tuple(ids[:w].tolist()), tuple(am[:w].tolist())


def _adapters(model):
    """What decides `model`'s forward pass besides its weights: the active
    adapters and whether they are switched off (`models.reference`)."""
    # memory: peft loads SciPy; only where adapters are used
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


_recordings = weakref.WeakKeyDictionary()  # model -> row dicts


def recording(model):
    """Whether a forward pass of `model` now is recorded: inside
    `recorded_forward`, with gradients on and no dropout (else it is not
    the prediction a measurement of these weights would make)."""
    return (bool(_recordings.get(model)) and torch.is_grad_enabled()
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
        key = row_key(ids[b].cpu(), am[b].cpu())
        w = len(key[0]) - 1
        row = {k: v[b, :w].detach().cpu() for k, v in stats.items()}
        for rows in _recordings[model]:
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
            stats, _ = next_token(logits[:, :-1].detach().float(), ids, am)
        record(model, ids, am, stats)

    _recordings.setdefault(model, []).append(rows)
    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()
        open_ = [r for r in _recordings[model] if r is not rows]
        if open_:
            _recordings[model] = open_
        else:
            del _recordings[model]


@contextmanager
def known_stats(model, rows):
    """Inside, `token_stats(model, ...)` of texts whose every row is in
    `rows` (from `recorded_forward`, at the weights `model` has now) returns
    them instead of running a forward pass."""
    previous = _known.get(model)
    _known[model] = rows
    try:
        yield
    finally:
        if previous is None:
            _known.pop(model, None)
        else:
            _known[model] = previous


def recorded_rows(model, input_ids, attention_mask):
    """`token_stats` of these rows from `known_stats`, or None."""
    rows = _known.get(model)
    if not rows:
        return None
    state = _adapters(model)  # an adapter switched since: not these rows
    found = [rows.get((state, row_key(i, a)))
             for i, a in zip(input_ids.cpu(), attention_mask.cpu())]
    if any(r is None for r in found):
        return None
    T = input_ids.shape[1]
    return {k: torch.stack([pad_to(r[k][None], T - 1)[0] for r in found])
            for k in ('logprob', 'hit', 'mask')}
