"""The one training loop every method uses.

A method supplies a loss function `loss_fn(model, batch)`; the loop does the
rest: optimizer, gradient accumulation, an event per step for live figures
(`callbacks`), evaluation every `eval_every` steps, a stopping rule, a
progress bar, and a divergence guard:
- a NaN/inf loss or gradient is caught before the optimizer applies it, so
  the weights stay those of the last good step;
- a guarded metric (retain perplexity, by default) past its bound stops the
  run and restores the weights of the last evaluation within the bound;
- an interrupt (Jupyter's stop button) is held back while the optimizer
  writes the weights, so the model is always that of a completed step, the
  last one in the events.
"""
import contextlib
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .fast.heap import TRAINING_LIMIT, measuring, reusing_heap
from .fast.recorded import known_stats, recorded_forward
from .models import load_trainable_state, trainable_state


@dataclass
class TrainConfig:
    """Settings of one run of the loop."""
    lr: float = 5e-5
    steps: int = 10
    grad_accum: int = 1  # batches per optimizer step
    optimizer: str = 'adam'  # 'adam', 'adamw' or 'sgd'
    betas: tuple = (0.9, 0.98)
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # 0: no clipping
    eval_every: int = 1  # steps between evaluations (0: only at the end)
    guard_key: str = 'retain/perplexity'  # metric the divergence guard reads
    guard_bound: float = math.inf  # stop and restore when it exceeds this
    seed: int = 0
    desc: str = 'training'
    progress: bool = True
    # keep freed blocks in the heap while training (`reusing_heap`): on a
    # CPU a step then runs without page faults for every activation, but
    # the heap keeps its holes; small micro-batches keep that in bounds
    reuse_heap: bool = False
    # evaluate the weights after the next step's gradient is computed and
    # before it is applied: an evaluation of the very texts the step trains
    # on then reads that forward pass (`recorded_forward`) instead of
    # running its own; the gradient computed before a stop is discarded
    eval_before_update: bool = False


@dataclass
class TrainResult:
    """What happened: how the run ended, and every event on the way."""
    status: str  # 'completed', 'stopped', 'diverged' or 'interrupted'
    steps: int
    message: str = ''
    events: list = field(default_factory=list)
    restored: int = None  # the step whose weights a divergence restored

    def series(self, key):
        """(steps, values) of one key over the events that carry it."""
        pts = [(e['step'], e[key]) for e in self.events if key in e]
        return [p[0] for p in pts], [p[1] for p in pts]

    def last(self, key):
        """The last recorded value of `key`."""
        return self.series(key)[1][-1]


@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C (Jupyter's stop button) until the block has finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda *a: caught.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def make_optimizer(params, config):
    """The optimizer `config` names, over the trainable parameters."""
    params = [p for p in params if p.requires_grad]
    if config.optimizer == 'adam':
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas,
                                weight_decay=config.weight_decay)
    if config.optimizer == 'adamw':
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay)
    if config.optimizer == 'sgd':
        return torch.optim.SGD(params, lr=config.lr)
    raise ValueError(f'unknown optimizer {config.optimizer!r}')


def clip_gradient(model, max_norm):
    """The gradient's total L2 norm, before clipping; the gradient scaled
    to `max_norm` when it is longer (0: never). Unlike `clip_grad_norm_`,
    which multiplies every gradient by its clamped factor even when that
    is 1, a gradient within bounds is only read: one pass over it, not
    two. The clipped gradient is the same to the bit."""
    params = [p for p in model.parameters()
              if p.requires_grad and p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    # clip_grads_with_norm_'s own factor, max_norm / (norm + 1e-6)
    if max_norm and torch.isfinite(norm) and max_norm / (norm + 1e-6) < 1:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


def on_device(batch, device):
    """`batch` (tensors in dicts, lists and tuples) with every tensor on
    `device`: a batch built on the CPU trains a model on a GPU."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: on_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(on_device(v, device) for v in batch)
    return batch


def accumulate(model, terms, batches, grad_accum):
    """Backpropagate one step's `grad_accum` batches; return the step's
    loss and its logged parts. A batch with a `share` (`full_batches`)
    weighs its loss by it, else by 1 / grad_accum. Batches go to the
    model's device."""
    total, parts = 0.0, {}
    device = next(model.parameters()).device
    for _ in range(grad_accum):
        batch = on_device(next(batches), device)
        share = batch.get('share')
        for term in terms:
            out = term(model, batch)
            loss, extra = out if isinstance(out, tuple) else (out, {})
            _weighed(loss, share, grad_accum).backward()
            total += _weighed(loss.item(), share, grad_accum)
            for k, v in extra.items():
                parts[k] = parts.get(k, 0.0) + _weighed(float(v), share,
                                                        grad_accum)
        del batch  # not held while the next one is built
    return total, parts


def _weighed(x, share, grad_accum):
    return x / grad_accum if share is None else x * share


def train(model, loss_fn, batches, config, callbacks=(), evaluate=None,
          should_stop=None):
    """Run the loop; return a `TrainResult`.

    - `loss_fn(model, batch)` returns the loss to minimise, or a pair
      (loss, dict of named parts to log). A list of such functions is a
      loss that is their sum: each term is backpropagated before the next
      is computed, the same gradient with the memory of one term.
    - `batches` is an iterator of batches (dicts of tensors); see
      `accumulate` for how a step's batches are weighed.
    - `evaluate(model)` returns a dict of metrics; it runs before the first
      step and every `eval_every` steps (with `eval_before_update`, once
      the next step's gradient is computed: the weights are the same).
    - `should_stop(metrics)` returns a reason (str) to stop early, or None.
    - each callback receives every event (a dict with 'step' and 'kind').
    """
    torch.manual_seed(config.seed)
    terms = loss_fn if isinstance(loss_fn, (list, tuple)) else [loss_fn]
    opt = make_optimizer(model.parameters(), config)
    result = TrainResult('completed', 0)
    good = None  # weights of the last evaluation within the guard's bound
    good_step = None
    start = time.perf_counter()

    def emit(event):
        event['time'] = time.perf_counter() - start
        result.events.append(event)
        for cb in callbacks:
            cb(event)

    def due(step):
        """Whether the weights after `step` steps are evaluated."""
        return evaluate is not None and (
            step in (0, config.steps)
            or bool(config.eval_every and step % config.eval_every == 0))

    def run_eval(step, seen=None):
        """Evaluate (reading the forward pass `seen`, if recorded at these
        weights); return (status, message, restore) to stop, or None."""
        nonlocal good, good_step
        was_training = model.training
        model.eval()
        with (known_stats(model, seen) if seen
              else contextlib.nullcontext()):
            metrics = measuring(evaluate)(model)
        model.train(was_training)
        emit({'step': step, 'kind': 'eval', **metrics})
        value = metrics.get(config.guard_key)
        if value is not None and not value <= config.guard_bound:
            return 'diverged', (f'{config.guard_key} = {value:.4g} passed '
                                f'the bound {config.guard_bound:.4g}; '
                                f'restored the weights of the last good '
                                f'evaluation'), good is not None
        if value is not None:  # the last weights known to be within bound
            good, good_step = trainable_state(model, into=good), step
        if should_stop is not None:
            reason = should_stop(metrics)
            if reason:
                return 'stopped', reason, False
        return None

    bar = tqdm(total=config.steps, desc=config.desc, leave=False,
               disable=not config.progress)
    step = 0
    ahead = config.eval_before_update and config.steps > 0
    with (reusing_heap(TRAINING_LIMIT) if config.reuse_heap
          else contextlib.nullcontext()):
        try:
            verdict = run_eval(0) if due(0) and not ahead else None
            while verdict is None and step < config.steps:
                model.train()
                # reusing the heap, the gradients keep their memory from
                # step to step (zeroed in place), so they do not cut up
                # the heap anew at every step
                opt.zero_grad(set_to_none=not config.reuse_heap)
                record = ahead and due(step)
                with (recorded_forward(model) if record
                      else contextlib.nullcontext()) as seen:
                    total, parts = accumulate(model, terms, batches,
                                              config.grad_accum)
                if record:  # the weights are still those after `step`
                    verdict = run_eval(step, seen)
                    if verdict:
                        break
                if not math.isfinite(total):
                    verdict = ('diverged', f'the loss became {total} at '
                               f'step {step + 1}; not applied', False)
                    break
                norm = clip_gradient(model, config.max_grad_norm)
                if not torch.isfinite(norm):
                    verdict = ('diverged', f'the gradient became '
                               f'{norm.item()} at step {step + 1}; not '
                               f'applied', False)
                    break
                with deferred_interrupt():
                    opt.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f'{total:.3f}')
                emit({'step': step, 'kind': 'step', 'loss': total,
                      'grad_norm': norm.item(), **parts})
                # ahead, the next step's gradient brings the evaluation,
                # except after the last step
                if due(step) and (not ahead or step == config.steps):
                    verdict = run_eval(step)
        except KeyboardInterrupt:
            verdict = ('interrupted', f'interrupted by the user; the model '
                       f'is as after step {step}', False)
        finally:
            bar.close()
            model.eval()
            # the last gradient is not applied: its memory goes back now,
            # not when the model next trains
            model.zero_grad(set_to_none=True)
    result.steps = step
    if verdict:
        result.status, result.message, restore = verdict
        if restore:
            load_trainable_state(model, good)
            result.restored = good_step
    return result
