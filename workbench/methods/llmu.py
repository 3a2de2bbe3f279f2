"""Large Language Model Unlearning: gradient ascent, random mismatch and a
KL to the original model.

Yao, Xu and Liu, "Large Language Model Unlearning", NeurIPS 2024,
https://arxiv.org/abs/2310.10683 (code: kevinyaobytedance/llm_unlearn)

With L(x, y) the mean cross-entropy of the answer tokens of y given the
prompt x, each update minimises

    eps1 * L_fgt + eps2 * L_rdn + eps3 * L_nor
    L_fgt = - L(x, y)                  (x, y) from the forget set
    L_rdn = mean_k L(x, y_k)           the forget prompts, random normal
                                       answers y_1..y_K
    L_nor = sum_i KL(h_orig(x, y<i) || h_theta(x, y<i))   normal (x, y)

The official code's three bugs that silently change or zero these terms
are not repeated: answer masks come from the tokenised prompt's length in
tokens (not the length of a BatchEncoding, which is 2), nothing is padded
to the tokenizer's maximum length (which puts the whole answer past the
mask), and padding is found from the attention mask (not a hard-coded pad
id). `qa_batch` builds every batch; tests check that each loss covers
exactly the answer tokens.
"""
from dataclasses import dataclass, field

import torch

from ..core import WorkbenchError
from ..core.data import qa_batch
from ..core.scoring import logprobs, token_kl, token_logprobs, vocab_logprobs
from .base import Plan

NAME = 'llmu'
TITLE = ('gradient ascent + random answers + KL (Yao et al.; lines '
         'need "question" and "answer", --retain the normal pairs)')
ORDER = 70
NEEDS = ('tokenizer', 'forget_pairs', 'retain_pairs')
HELPERS = ()


@dataclass
class LLMUConfig:
    """Hyperparameters: the paper's weights (bad 0.5, random 1, normal 1),
    K = 5 random answers and batch 2; the learning rate is for LoRA on a
    small model (the paper: 2e-6, full fine-tuning of OPT-1.3B)."""
    lr: float = field(default=5e-4, metadata={
        'min': 1e-6, 'max': 1e-2, 'log': True, 'help': 'AdamW learning rate'})
    steps: int = field(default=60, metadata={
        'min': 1, 'max': 1000, 'help': 'most updates'})
    batch_size: int = field(default=2, metadata={
        'min': 1, 'max': 16, 'help': 'forget and normal pairs per update'})
    bad_weight: float = field(default=0.5, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'eps1: gradient ascent on the '
                                        'forget answers'})
    random_weight: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'eps2: forget prompts with random '
                                        'normal answers'})
    normal_weight: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'eps3: KL to the original model on '
                                        'normal data'})
    random_answers: int = field(default=5, metadata={
        'min': 1, 'max': 10, 'help': 'K: random answers per update'})
    spike_nll: float = field(default=3.0, metadata={
        'min': 1.0, 'max': 100.0, 'help': "forget answers' NLL (nats/token) "
                                          "that counts as a spike"})
    run_on: float = field(default=3.0, metadata={
        'min': 0.0, 'max': 10.0, 'help': 'after the spike, run on this many '
                                         'times the steps it took (0: stop '
                                         'at the spike)'})
    seed: int = field(default=8888, metadata={
        'min': 0, 'max': 10000, 'help': 'random seed (the paper: 8888)'})

    def __post_init__(self):
        weights = (self.bad_weight, self.random_weight, self.normal_weight)
        if (not self.lr > 0 or self.steps < 1 or self.batch_size < 1
                or self.random_answers < 1 or min(weights) < 0
                or self.run_on < 0 or not self.spike_nll > 0):
            raise WorkbenchError(f'LLMU needs lr > 0, steps, batch_size and '
                                 f'random_answers >= 1, weights >= 0, '
                                 f'run_on >= 0 and spike_nll > 0, got {self}')


Config = LLMUConfig


def answer_loss(model, batch):
    """L(x, y): mean cross-entropy over the answer tokens of each pair,
    averaged over the batch (as the official code averages)."""
    logp, mask = token_logprobs(model, batch)
    per_pair = -(logp * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_pair.mean()


def llmu_loss(model, batch):
    """The update of Yao et al. for one batch: the forget pairs, the same
    prompts with K random normal answers, and normal pairs with the
    original model's distributions (computed before, without gradient)."""
    w = batch['weights']
    # L_fgt = -L(x_fgt, y_fgt): gradient ascent on the forget answers
    forget_nll = answer_loss(model, batch['forget'])
    # L_rdn = 1/K sum_k L(x_fgt, y_rdn_k): forget prompts, normal answers
    random_nll = answer_loss(model, batch['random'])
    # L_nor = sum_i KL(h_orig(x, y_<i) || h_theta(x, y_<i)) on normal data
    normal = batch['normal']
    logp, mask = vocab_logprobs(model, normal)
    mask = mask & normal['target_mask'][:, 1:mask.shape[1] + 1].to(
        mask.device).bool()
    normal_kl = token_kl(normal['reference_logprobs'], logp, mask)
    loss = (-w['bad'] * forget_nll + w['random'] * random_nll
            + w['normal'] * normal_kl)
    return loss, {'forget_nll': forget_nll.item(),
                  'random_nll': random_nll.item(),
                  'normal_kl': normal_kl.item()}


def batches(tokenizer, forget, normal, config, reference):
    """Updates forever: `batch_size` forget pairs, the same prompts with
    each of K normal answers drawn at random (shared by the batch, as the
    official code), and `batch_size` normal pairs with `reference(batch)`,
    the original model's log-distributions on them. `forget` and `normal`
    are lists of dicts with `question` and `answer`."""
    gen = torch.Generator().manual_seed(config.seed)
    answers = [r['answer'] for r in normal]
    b = config.batch_size

    def order(n):
        while True:
            yield from torch.randperm(n, generator=gen).tolist()

    fi, ni = order(len(forget)), order(len(normal))
    while True:
        f = [forget[next(fi)] for _ in range(b)]
        n = [normal[next(ni)] for _ in range(b)]
        k = torch.randint(len(answers), (config.random_answers,),
                          generator=gen).tolist()
        qs = [r['question'] for r in f]
        normal_batch = qa_batch(tokenizer, [r['question'] for r in n],
                                [r['answer'] for r in n])
        normal_batch['reference_logprobs'], _ = reference(normal_batch)
        yield {'forget': qa_batch(tokenizer, qs, [r['answer'] for r in f]),
               'random': qa_batch(tokenizer, qs * len(k),
                                  [answers[j] for j in k for _ in qs]),
               'normal': normal_batch,
               'weights': {'bad': config.bad_weight,
                           'random': config.random_weight,
                           'normal': config.normal_weight}}


def plan(task, model, config):
    """Yao et al.'s update on `model`, from the forget pairs and the normal
    (retain) pairs, with the original model (`task.reference`) for the KL.

    The paper keeps unlearning for 3-5 times more batches after the forget
    loss becomes abnormally high. Here the forget answers' NLL (the
    gradient-ascent term, nats per token) reaching `spike_nll` marks the
    spike at step s; the run stops at step s * (1 + run_on), or at
    `steps`. The caller's stopping rule (on its evaluated metrics) can end
    it earlier."""
    forget, normal = task.forget_pairs, task.retain_pairs
    state = {'step': 0, 'spike': None}

    def reference(batch):
        with task.original_model(model) as ref:
            return logprobs(ref, batch)

    def loss_fn(m, batch):
        loss, parts = llmu_loss(m, batch)
        state['step'] += 1
        if state['spike'] is None and parts['forget_nll'] >= config.spike_nll:
            state['spike'] = state['step']
        return loss, parts

    def measure(m, evaluate):
        out = {}
        if state['spike'] is not None:
            out['llmu/spike_step'] = state['spike']
        if evaluate:
            out.update(evaluate(m))
        return out

    def stop(metrics, should_stop):
        s = state['spike']
        if s is not None and state['step'] >= s * (1 + config.run_on):
            return (f'the forget loss spiked (NLL >= {config.spike_nll}) at '
                    f'step {s}; ran on for {state["step"] - s} more')
        return should_stop(metrics) if should_stop and metrics else None

    return Plan(loss_fn, batches(task.tokenizer, forget, normal, config,
                                 reference),
                loop={'optimizer': 'adamw', 'betas': (0.9, 0.999)},
                desc='LLM unlearning', measure=measure, stop=stop,
                every_step=True)
