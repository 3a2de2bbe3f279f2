"""Memory and throughput of the unlearning methods in the `7b` profile, on
a GPU.

A randomly initialised model of Mistral-7B's architecture (no download):
LoRA on every linear layer, bf16, gradient checkpointing, the workbench's
training loop, and each method's own loss on random token batches of the
shapes it trains on (`--batch` sequences of `--tokens` tokens per part):
- `kl`: gradient ascent plus a KL term to the frozen original through the
  reference (the adapter disabled: no second copy of the weights);
- `ga`: `workbench.methods.ga` as Jang et al. run it (full-batch steps);
- `seul`: `workbench.methods.seul`, spans selected by the current model at
  every step;
- `graddiff`, `npo`: the forget batch and as many retain rows per step
  (NPO's reference log-probabilities computed once);
- `loo`: distillation towards fixed soft labels (computed once by a frozen
  model; the teachers are adapters on the same base, so the reference
  stands in for them);
- `kga`: the alignment on the forget batch plus the retain KL, A_D's
  distributions computed for each retain minibatch;
- `llmu`: forget pairs, K = 2 random-answer copies and normal pairs with
  the original's distributions, per step;
- `whp`: cross-entropy on generic labels (half the positions labelled).

    python bench/gpu_7b.py --method ga --steps 5 --batch 8 --tokens 256
    python bench/gpu_7b.py --method all --out bench/gpu_7b.json

Prints peak GPU memory, tokens per second and model FLOP utilisation (6N
FLOPs per trained token, 2N per token of a frozen model's forward), and
writes them to `--out` after each method; a method that fails (out of
memory, say) is reported with its error, the others still run, and the
exit status is 1. On a machine without a suitable GPU it refuses with one
line, before loading.
"""
import argparse
import json
import sys
import time

import torch

from workbench import WorkbenchError, methods
from workbench.core import models
from workbench.core.profiles import get_profile
from workbench.core.scoring import vocab_logprobs
from workbench.methods import kga, llmu, loo, whp
from workbench.core.train import TrainConfig, train

DEVICE = 'cuda'  # the tests run the method runners on 'cpu'
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}  # dense bf16


def build(profile):
    """Mistral-7B's architecture with random weights, on the GPU."""
    from transformers import MistralConfig, MistralForCausalLM
    config = MistralConfig()  # the defaults are Mistral-7B-v0.1's
    torch.manual_seed(0)
    with torch.device('cuda'):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return models.add_lora(model, profile.lora_r)


METHODS = ['kl', 'ga', 'seul', 'graddiff', 'npo', 'loo', 'kga', 'llmu',
           'whp']


def random_batch(vocab, rows, tokens, answer_from=None):
    """Random token ids; with `answer_from`, a target mask over the
    positions from there on (the answer of a Q&A pair)."""
    ids = torch.randint(0, vocab, (rows, tokens), device=DEVICE)
    b = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    if answer_from is not None:
        b['target_mask'] = (torch.arange(tokens, device=DEVICE)
                            >= answer_from).long().expand(rows, -1)
    return b


@torch.no_grad()
def frozen_logprobs(model, b):
    """A frozen model's log-distributions on a batch (the reference)."""
    with models.reference(model) as ref:
        return vocab_logprobs(ref, b)[0]


def method_runner(method, model, args):
    """run(steps) -> TrainResult for `method`, with the tokens trained on
    and the tokens read by a frozen model at each step."""
    V, B, T = model.config.vocab_size, args.batch, args.tokens
    forget = random_batch(V, B, T)
    retain = random_batch(V, B, T)
    lr = 1e-5

    def loop(loss, batches, steps):
        return train(model, loss, batches, TrainConfig(
            lr=lr, steps=steps, progress=False))

    def repeat(make):
        while True:
            yield make()

    if method == 'kl':
        def loss(m, b):
            """Gradient ascent plus a KL to the reference (as KGA and Yao
            et al. add), from one forward pass of each model."""
            ref_logp = frozen_logprobs(m, b)
            logp = torch.log_softmax(m(**b).logits[:, :-1].float(), -1)
            nll = -logp.gather(-1, b['input_ids'][:, 1:, None]).mean()
            kl = torch.nn.functional.kl_div(logp, ref_logp, log_target=True,
                                            reduction='batchmean')
            return -nll + kl, {'nll': nll.item(), 'kl': kl.item()}
        return (lambda s: loop(loss, repeat(lambda: forget), s)), B * T, B * T
    if method in ('ga', 'seul', 'graddiff', 'npo'):
        # the method's own plan, through `methods.run`
        task = methods.Task(forget=forget, retain=retain)
        extra = {'selector': 'current'} if method == 'seul' else {}
        Config = methods.get(method).Config
        trained = (2 if 'retain' in methods.get(method).NEEDS else 1) * B * T
        return (lambda s: methods.run(method, model, task, Config(
            lr=lr, steps=s, micro_batch=B, **extra), progress=False)), \
            trained, 0
    if method == 'loo':
        fixed = {**forget, 'target_logprobs': frozen_logprobs(model, forget)}
        return (lambda s: loop(loo.loo_loss, repeat(lambda: fixed), s)), \
            B * T, 0
    if method == 'kga':
        f_t = {**forget, 'target_logprobs': frozen_logprobs(model, forget)}

        def kga_batch():
            r = random_batch(V, B, T)
            r['target_logprobs'] = frozen_logprobs(model, r)
            return {'forget': f_t, 'retain': r, 'gap': 0.1, 'alpha': 0.3}
        return (lambda s: loop(kga.kga_loss, repeat(kga_batch), s)), \
            2 * B * T, B * T
    if method == 'llmu':
        def llmu_batch():
            normal = random_batch(V, B, T, T // 2)
            normal['reference_logprobs'] = frozen_logprobs(model, normal)
            return {'forget': random_batch(V, B, T, T // 2),
                    'random': random_batch(V, 2 * B, T, T // 2),
                    'normal': normal,
                    'weights': {'bad': 0.5, 'random': 1.0, 'normal': 1.0}}
        return (lambda s: loop(llmu.llmu_loss, repeat(llmu_batch), s)), \
            4 * B * T, B * T
    if method == 'whp':
        labels = forget['input_ids'].clone()
        labels[:, ::2] = -100
        labelled = {**forget, 'labels': labels}
        return (lambda s: loop(whp.whp_loss, repeat(lambda: labelled), s)), \
            B * T, 0
    raise ValueError(method)


def measure(method, model, args, n_params, n_train):
    """Warm up, then time `args.steps` steps; return the report."""
    run, trained, frozen = method_runner(method, model, args)
    run(1)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run(args.steps)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    steps = result.steps  # fewer than asked when a guard stopped the run
    if steps < 1:
        raise WorkbenchError(f'{method} took no step: {result.status}, '
                             f'{result.message}')
    # per trained token: forward 2N, recomputation under checkpointing 2N,
    # backward 2N (activation gradients only: the frozen weights need
    # none); per token a frozen model reads: its forward, 2N
    flops = (6 * trained + 2 * frozen) * n_params * steps
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return {
        'device': name, 'method': method, 'status': result.status,
        'steps': steps,
        'params': n_params, 'trainable': n_train,
        'batch': args.batch, 'tokens_per_sequence': args.tokens,
        'peak_gpu_gb': torch.cuda.max_memory_allocated() / 2**30,
        'trained_tokens_per_s': trained * steps / seconds,
        'step_s': seconds / steps,
        'mfu': flops / seconds / 1e12 / peak if peak else None,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--tokens', type=int, default=256)
    parser.add_argument('--method', default='kl', choices=METHODS + ['all'])
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    profile = get_profile('7b')
    try:
        models.check_gpu_memory(profile)
    except WorkbenchError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    model = build(profile)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    chosen = METHODS if args.method == "all" else [args.method]

    def measure_one(method):
        try:
            return measure(method, model, args, n_params, n_train)
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
    reports = run_methods(chosen, measure_one, args.out)
    return 1 if any('failed' in r for r in reports) else 0


def run_methods(methods, measure_one, out=None):
    """Each method's report, printed and written to `out` as it comes; a
    method that fails (out of memory, say) is reported with its error, and
    the others still run."""
    reports = []
    for method in methods:
        try:
            report = measure_one(method)
        except (WorkbenchError, RuntimeError) as e:
            report = {'method': method, 'failed': one_line(e)}
        reports.append(report)
        print(json.dumps(report, indent=1), flush=True)
        if out:
            with open(out, 'w') as f:
                json.dump(reports, f, indent=1)
    return reports


def one_line(error):
    """An exception as one line: its type and its message's first line."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else ""}'


if __name__ == '__main__':
    sys.exit(main())
