"""Leave-one-out ensemble distillation.

Liu and Kalinli, "Forgetting Private Textual Sequences in Language Models
via Leave-One-Out Ensemble", ICASSP 2024, https://arxiv.org/abs/2309.16082

A student trained on all data, and M teachers, each trained on one disjoint
partition (one "user"). To forget a sequence s, drop the teacher j(s) whose
partition held it, average the other teachers' next-token distributions
into soft labels, and fine-tune the student on s towards them. None of
those teachers saw s, so their average is what a model that never saw s
predicts. The soft labels are fixed (the teachers are frozen), so they are
computed once, before the first step.
"""
from dataclasses import dataclass, field

import torch

from ..core import WorkbenchError
from ..core.data import full_batches, used_width
from ..core.scoring import token_kl, vocab_logprobs
from .base import Plan

NAME = 'loo'
TITLE = ('leave-one-out ensemble (Liu and Kalinli; lines need '
         '"partition")')
ORDER = 50
NEEDS = ('roles', 'teachers', 'partitions')
HELPERS = ()  # the teachers, named by the task

ENSEMBLES = ('leave-one-out', 'full')


@dataclass
class LOOConfig:
    """Hyperparameters of the leave-one-out distillation."""
    lr: float = field(default=1e-3, metadata={
        'min': 1e-5, 'max': 1e-2, 'log': True,
        'help': 'Adam learning rate (LoRA)'})
    steps: int = field(default=10, metadata={
        'min': 1, 'max': 40, 'help': 'passes over the forget set'})
    ensemble: str = field(default='leave-one-out', metadata={
        'choices': ENSEMBLES, 'help': 'leave out the teacher that saw each '
                                      'sequence, or keep all (leaks)'})
    micro_batch: int = field(default=8, metadata={
        'min': 1, 'max': 32, 'help': 'sequences per forward pass (the same '
                                     'update, less memory)'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        if not self.lr > 0 or self.steps < 1 or self.micro_batch < 1:
            raise WorkbenchError(f'the leave-one-out method needs lr > 0, '
                                 f'steps >= 1 and micro_batch >= 1, got '
                                 f'{self}')
        if self.ensemble not in ENSEMBLES:
            raise WorkbenchError(f'ensemble is one of {ENSEMBLES}, not '
                                 f'{self.ensemble!r}')


Config = LOOConfig


@torch.no_grad()
def ensemble_logprobs(teacher_logprobs, excluded):
    """log q_{-j}(v | x_<t) for each row: the log of the mean of the
    teachers' probabilities, leaving out teacher `excluded[b]` for row b
    (None: keep every teacher, the full ensemble).

    `teacher_logprobs` is (K, B, T, V), one log-distribution per teacher.
    """
    K, B = teacher_logprobs.shape[:2]
    keep = torch.ones(K, B, dtype=torch.bool)
    for b, j in enumerate(excluded):
        if j is not None:
            keep[j, b] = False
    if not keep.any(0).all():
        raise WorkbenchError('a sequence has no teacher left after leaving '
                             'one out: the ensemble needs at least 2')
    keep = keep.to(teacher_logprobs.device)  # beside the teachers' (GPU)
    # q_{-j}(v|x_<t) = 1/(M-1) sum_{k != j(s)} p_{T_k}(v|x_<t)
    masked = teacher_logprobs.masked_fill(~keep[..., None, None],
                                          float('-inf'))
    return (torch.logsumexp(masked, 0)
            - keep.sum(0).float().log()[:, None, None])


def loo_loss(model, batch):
    """Token-level distillation towards the fixed soft labels of the
    batch (`target_logprobs`, from `ensemble_logprobs`)."""
    # L(theta) = sum_{s in D_f} sum_t KL(q_{-j(s)}(.|s_<t) || p_theta(.|s_<t))
    logp, mask = vocab_logprobs(model, batch)
    return token_kl(batch['target_logprobs'], logp, mask)


def soft_labels(roles, teachers, forget, partitions, ensemble, rows=2):
    """The fixed soft labels of the forget sequences: `partitions[b]` is
    the index (in `teachers`) of the teacher whose data held row b.
    Computed `rows` sequences at a time: all teachers' distributions of
    the whole forget set at once would take K times its labels' memory."""
    excluded = list(partitions) if ensemble == 'leave-one-out' \
        else [None] * len(partitions)
    width = used_width(forget['attention_mask'])
    parts = []
    for i in range(0, len(excluded), rows):
        chunk = {k: forget[k][i:i + rows, :width]
                 for k in ('input_ids', 'attention_mask')}
        logps = torch.stack([roles.logprobs(t, chunk)[0] for t in teachers])
        lp = ensemble_logprobs(logps, excluded[i:i + rows])
        pad = width - 1 - lp.shape[1]  # the chunk may be narrower
        parts.append(torch.nn.functional.pad(lp, (0, 0, 0, pad)))
    return torch.cat(parts)


def plan(task, model, config):
    """Distil `model` (a copy of the student) on the forget set towards the
    teachers' ensemble: `task.partitions[b]` is the index in
    `task.teachers` of the teacher that saw row b. With
    `config.ensemble='full'` every teacher is kept (the baseline that
    leaks)."""
    forget, partitions, teachers = task.forget, task.partitions, task.teachers
    if len(partitions) != forget['input_ids'].shape[0]:
        raise WorkbenchError('give one partition per forget sequence')
    if any(not 0 <= j < len(teachers) for j in partitions):
        raise WorkbenchError(f'a partition index is outside the '
                             f'{len(teachers)} teachers')
    targets = soft_labels(task.roles, teachers, forget, partitions,
                          config.ensemble)
    # every step is the whole forget set, in micro-batches weighed by their
    # share of its tokens: the gradient of the KL averaged over all of them
    batches, accum = full_batches(
        {'input_ids': forget['input_ids'],
         'attention_mask': forget['attention_mask'],
         'target_logprobs': targets}, config.micro_batch)
    return Plan(loo_loss, batches, accum, loop={'optimizer': 'adam'},
                desc=f'{config.ensemble} distillation')
