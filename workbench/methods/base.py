"""The one interface of the language-model methods, and the one run.

A method is a module of this package with
- `NAME`, `TITLE` (its paper), `ORDER` (its place in tables and choices);
- `Config`, the dataclass of its hyperparameters (the widgets of its
  notebook and the options of the command line come from its fields);
- `NEEDS`: the fields of the `Task` it reads besides the forget set, and
  `HELPERS`: the frozen roles it leans on besides the original (each a
  LoRA adapter of `task.roles`, trained by whoever sets the task up);
- its loss, a short function beside its equation;
- `plan(task, model, config)`: how it builds its batches from the task,
  with the loss and its optimiser settings, as a `Plan`.

`run` drives any of them through the one training loop
(`core.train.train`) with the caller's evaluation, stopping rule and
divergence guard. OpenUnlearning's trainers are built the same way: each
method overrides its loss, the loop is shared.
"""
from dataclasses import dataclass, field
from typing import Any, Callable

from ..core import WorkbenchError
from ..core.models import reference as kept_original
from ..core.train import TrainConfig, train


@dataclass
class Task:
    """What a method unlearns, and what it may lean on.

    `forget` and `retain` are tokenised (`input_ids`, `attention_mask`, and
    `target_mask` where only some tokens count, as a Q&A pair's answer);
    the other fields are read by the methods that list them in `NEEDS`.
    """
    forget: dict
    retain: dict = None
    tokenizer: Any = None
    # the frozen models, as roles on one base (`core.roles.Roles`)
    roles: Any = None
    original: str = 'original'  # the role the unlearning starts from
    # () -> a context manager yielding the original model (None: see
    # `original_model`)
    reference: Callable = None
    forget_pairs: list = None  # llmu: {'question', 'answer'} dicts
    retain_pairs: list = None  # llmu: the normal pairs
    new: dict = None  # kga: tokenised texts never trained on (D_n)
    span_mask: Any = None  # seul: (B, T) annotated span tokens
    partitions: list = None  # loo: the teacher (index) of each forget row
    teachers: list = None  # loo: the teachers' role names
    forget_texts: list = None  # whp: the target texts
    anchors: list = None  # whp: {'term', 'generic'} dicts
    labelled: list = None  # whp: (input_ids, labels) items, if made already

    def original_model(self, model):
        """A context manager yielding the original of `model`: the task's
        `reference`, else role `original` of its roles, else the model's
        own (its adapter disabled, or the kept copy)."""
        if self.reference is not None:
            return self.reference()
        if self.roles is not None and self.original in self.roles.names:
            return self.roles.active(self.original)
        return kept_original(model)


@dataclass
class Plan:
    """How one method trains: its loss (a function, or a list of terms
    backpropagated one after the other), its batches, and what it sets of
    the loop; `measure(model, evaluate)` and `stop(metrics, should_stop)`
    wrap the caller's evaluation and stopping rule where the method has
    its own (KGA's alignment, LLMU's spike); `info` goes onto the result."""
    loss: Any
    batches: Any
    grad_accum: int = 1
    loop: dict = field(default_factory=dict)
    desc: str = 'unlearning'
    measure: Callable = None
    stop: Callable = None
    every_step: bool = False  # the method reads every step's evaluation
    info: dict = field(default_factory=dict)


def check(method, task):
    """One clear error when the task lacks what the method reads."""
    missing = [f for f in method.NEEDS if getattr(task, f) is None
               or (hasattr(getattr(task, f), '__len__')
                   and len(getattr(task, f)) == 0)]
    if missing:
        raise WorkbenchError(f'{method.NAME} needs {", ".join(missing)} in '
                             f'its task')
    if method.HELPERS:
        names = task.roles.names if task.roles is not None else []
        absent = [h for h in method.HELPERS if h not in names]
        if absent:
            raise WorkbenchError(f'{method.NAME} needs the trained roles '
                                 f'{", ".join(absent)}')


class _Steps:
    """Counts the updates of a run (a callback of the loop)."""

    def __init__(self):
        self.n = 0

    def __call__(self, event):
        if event['kind'] == 'step':
            self.n = event['step']


def run(method, model, task, config, callbacks=(), evaluate=None,
        should_stop=None, guard_bound=float('inf'),
        guard_key='retain/perplexity', eval_every=1, progress=True,
        **options):
    """Unlearn `task` with `method` (a method's module; `methods.run`
    takes its name) on `model` (its trainable weights: a copy of the
    original); returns the loop's `TrainResult`.

    - `evaluate(model)` gives the metrics after every `eval_every` updates
      (and before the first, and after the last);
    - `should_stop(metrics)` gives a reason to stop early, or None;
    - a metric `guard_key` past `guard_bound` stops the run and restores
      the weights of the last evaluation within the bound;
    - `options` go to the method's `plan` (KGA's `evaluate_forget`).
    """
    check(method, task)
    plan = method.plan(task, model, config, **options)
    steps = _Steps()
    measured = evaluate
    if plan.every_step and evaluate is not None and eval_every != 1:
        # the method evaluates every update; the caller's metrics come
        # every `eval_every` of them
        measured = lambda m: (evaluate(m) if steps.n % eval_every == 0  # noqa: E731
                              else {})
    if plan.measure is not None:
        inner = measured
        measured = lambda m: plan.measure(m, inner)  # noqa: E731
    stop = should_stop
    if plan.stop is not None:
        stop = lambda m: plan.stop(m, should_stop)  # noqa: E731
    settings = {'eval_every': 1 if plan.every_step else eval_every,
                **plan.loop}
    loop = TrainConfig(lr=config.lr, steps=config.steps, seed=config.seed,
                       grad_accum=plan.grad_accum, guard_key=guard_key,
                       guard_bound=guard_bound, desc=plan.desc,
                       progress=progress, **settings)
    result = train(model, plan.loss, plan.batches, loop,
                   (steps, *callbacks), measured, stop)
    for k, v in plan.info.items():
        setattr(result, k, v)
    return result

