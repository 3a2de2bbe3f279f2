"""KGA: knowledge gap alignment.

Wang et al., "KGA: A General Machine Unlearning Framework Based on
Knowledge Gap Alignment", ACL 2023, https://arxiv.org/abs/2305.06535

On data a model never saw (D_n), the original model A_D differs from a
model trained on that data (A_n) by some gap. KGA trains A* (initialised
as A_D) so that on the forget set its gap to a model trained on D_f (A_f)
is that same gap: D_f then looks unseen to A*. A distillation term keeps A*
close to A_D on the retained data. A_D, A_f and A_n are frozen: the
new-data gap and A_f's distributions on D_f are computed once, before the
first step; A_D's on each retained minibatch as it comes.

One KL direction for both gaps, KL(model that trained on the data ||
model that did not), as the paper's generation code; padded positions are
masked out of every KL (the official code averages them in).
"""
from dataclasses import dataclass, field

import torch

from ..core import WorkbenchError
from ..core.scoring import token_kl, vocab_kl, vocab_logprobs
from .base import Plan

NAME = 'kga'
TITLE = 'knowledge gap alignment (Wang et al.; needs --new)'
ORDER = 60
NEEDS = ('roles', 'retain', 'new')
HELPERS = ('A_f', 'A_n')  # trained on the forget texts and on D_n


@dataclass
class KGAConfig:
    """Hyperparameters of KGA (generation task defaults where they
    transfer; the learning rate is for LoRA)."""
    lr: float = field(default=1e-3, metadata={
        'min': 1e-5, 'max': 1e-2, 'log': True, 'help': 'Adam learning rate'})
    steps: int = field(default=30, metadata={
        'min': 1, 'max': 200, 'help': 'most updates'})
    retain_weight: float = field(default=0.3, metadata={
        'min': 0.0, 'max': 3.0, 'help': 'alpha: weight of the retain KL'})
    batch_size: int = field(default=4, metadata={
        'min': 1, 'max': 32, 'help': 'retained texts per update'})
    stop_value: float = field(default=0.05, metadata={
        'min': 0.0, 'max': 1.0, 'help': 'stop when the alignment loss '
                                        'on the forget set is below this'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        if (not self.lr > 0 or self.steps < 1 or self.retain_weight < 0
                or self.batch_size < 1 or self.stop_value < 0):
            raise WorkbenchError(f'KGA needs lr > 0, steps >= 1, '
                                 f'retain_weight >= 0, batch_size >= 1 and '
                                 f'stop_value >= 0, got {self}')


Config = KGAConfig


@torch.no_grad()
def mean_kl(roles, target, model_role, data, rows=8):
    """KL(target || model_role) averaged over every real token of `data`
    (token-weighted over all batches, not one batch's value)."""
    total, count = 0.0, 0
    n = data['input_ids'].shape[0]
    for i in range(0, n, rows):
        batch = {k: v[i:i + rows] for k, v in data.items()}
        t, mask = roles.logprobs(target, batch)
        lp, _ = roles.logprobs(model_role, batch)
        total += token_kl(t, lp, mask).item() * mask.sum().item()
        count += mask.sum().item()
    return total / max(count, 1)


def alignment(model, forget, gap):
    """|KL(A_f || A*) on the forget texts - the new-data gap|, with the
    forget gap itself. The KL is over the whole forget set at once (the
    absolute value is of the set's mean), its logits 128 positions at a
    time (`vocab_kl`)."""
    forget_gap = vocab_kl(model, forget, forget['target_logprobs'])
    return (forget_gap - gap).abs(), forget_gap


def alignment_loss(model, batch):
    """KGA's alignment term for one update; `batch` holds the forget texts
    with A_f's frozen distributions and the new-data gap."""
    # L_a = | KL(A_f(x_f) || A*(x_f)) - KL(A_n(x_n) || A_D(x_n)) |
    l_a, forget_gap = alignment(model, batch['forget'], batch['gap'])
    return l_a, {'alignment': l_a.item(), 'forget_gap': forget_gap.item()}


def retain_loss(model, batch):
    """KGA's retain term, weighted; `batch['retain']` is a retained
    minibatch with A_D's frozen distributions on it."""
    # alpha L_r = alpha KL(A_D(x_r) || A*(x_r))
    l_r = vocab_kl(model, batch['retain'],
                   batch['retain']['target_logprobs'])
    return batch['alpha'] * l_r, {'retain_kl': l_r.item()}


# L = L_a + alpha L_r, as two terms: `train` backpropagates one after the
# other (the same gradient, the memory of one forward pass)
KGA_LOSS = [alignment_loss, retain_loss]


def kga_loss(model, batch):
    """The whole objective L = L_a + alpha L_r at once, with its parts."""
    (l_a, a), (l_r, r) = (term(model, batch) for term in KGA_LOSS)
    return l_a + l_r, {**a, **r}


def prepare(roles, a_d, a_f, a_n, forget, new):
    """What is frozen and used at every update, computed once: A_f's
    distributions on the forget texts (kept in float16: half the memory;
    in a test the KL they give moves by under 1e-4 nats plus 1e-4 of
    itself) and the new-data gap KL(A_n || A_D) averaged over all of D_n.
    A_D's distributions on the retained texts are not held: a minibatch's
    are computed as it comes, a forward pass without gradient (held, the
    `cpu` profile's eight bios took 63 MiB, which kept notebook 04 above
    its Binder memory goal)."""
    gap = mean_kl(roles, a_n, a_d, new)
    f_t, _ = roles.logprobs(a_f, forget, dtype=torch.float16)
    return {**forget, 'target_logprobs': f_t}, gap


def plan(task, model, config, evaluate_forget=None):
    """KGA on `model` (a copy of A_D, the task's original) with the frozen
    roles A_f (trained on the forget texts) and A_n (trained on the new
    texts `task.new`); the result's `gap` is the new-data gap aimed at.

    Every update sees the whole forget set and a random minibatch of the
    retained texts. The run stops early (as the paper's `stop_value`) when
    `kga/alignment` is at or below `config.stop_value`.
    `evaluate_forget(model, logp, mask)`, if given, also runs after each
    update with the forget texts' log-distributions just computed for the
    alignment loss (no second pass over the forget set).
    """
    roles, a_d, retain = task.roles, task.original, task.retain
    forget_t, gap = prepare(roles, a_d, 'A_f', 'A_n', task.forget, task.new)
    gen = torch.Generator().manual_seed(config.seed)
    n = retain['input_ids'].shape[0]

    def updates():
        while True:
            for idx in torch.randperm(n, generator=gen).split(
                    config.batch_size):
                batch = {k: v[idx] for k, v in retain.items()}
                batch['target_logprobs'] = roles.logprobs(
                    a_d, batch, dtype=torch.float16)[0]
                yield {'forget': forget_t, 'gap': gap,
                       'alpha': config.retain_weight, 'retain': batch}

    def measure(m, evaluate):
        target, out = forget_t['target_logprobs'], {}
        with torch.no_grad():
            if evaluate_forget:  # it reads the forget log-distributions
                logp, mask = vocab_logprobs(m, forget_t)
                fg = token_kl(target, logp, mask)
                out.update(evaluate_forget(m, logp, mask))
                del logp
            else:
                fg = vocab_kl(m, forget_t, target)
        out.update({'kga/alignment': (fg - gap).abs().item(),
                    'kga/forget_gap': fg.item(), 'kga/new_gap': gap})
        return {**out, **(evaluate(m) if evaluate else {})}

    def stop(metrics, should_stop):
        if metrics['kga/alignment'] <= config.stop_value:
            return (f'alignment loss {metrics["kga/alignment"]:.3f} <= '
                    f'{config.stop_value}')
        return should_stop(metrics) if should_stop else None

    return Plan(KGA_LOSS, updates(), loop={'optimizer': 'adam'}, desc='KGA',
                measure=measure, stop=stop, info={'gap': gap})
