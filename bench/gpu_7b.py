"""Memory and throughput of the unlearning methods in the `7b` profile, on
a GPU.

A randomly initialised model of Mistral-7B's architecture, built in bf16
(no download; a word-level tokenizer over its 32,000 ids is built here, as
none can be downloaded either): every model is a LoRA role on that one base
(`workbench.core.roles`, r=16 on every linear layer, gradient
checkpointing), and every registered method runs through `methods.run`, the
one training loop, on random batches of `--batch` sequences of `--tokens`
tokens per part:
- `ga`, `seul` (spans selected by the current model at every step),
  `graddiff`, `npo`: the forget batch (and as many retain rows per step);
- `loo`: distillation towards the soft labels of two teacher roles;
- `kga`: the alignment with roles A_f and A_n, plus the retain KL to the
  original, whose distributions are computed for each retain minibatch;
- `llmu`: forget pairs, K = 2 random-answer copies and normal pairs with
  the original's distributions, per step;
- `whp`: cross-entropy on generic labels (half the positions labelled);
- `kl` (not a method): gradient ascent plus a KL term to the frozen
  original through the disabled adapter, the shape several methods share.

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
from dataclasses import fields

import torch

from workbench import WorkbenchError, methods
from workbench.core import models
from workbench.core.profiles import get_profile
from workbench.core.roles import Roles
from workbench.core.scoring import vocab_logprobs
from workbench.core.train import TrainConfig, train

DEVICE = 'cuda'  # the tests run the method runners on 'cpu'
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}  # dense bf16


def build(profile):
    """Roles on Mistral-7B's architecture with random weights, made in
    bf16 on the GPU (never a float32 copy first)."""
    from transformers import MistralConfig, MistralForCausalLM
    config = MistralConfig()  # the defaults are Mistral-7B-v0.1's
    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device('cuda'):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(before)
    model.config.use_cache = False
    return Roles(profile, progress=False, base=model,
                 tokenizer=word_tokenizer(config.vocab_size))


def word_tokenizer(vocab_size):
    """A tokenizer built offline: the word `w<i>` is token i (from 2; 0 pads,
    1 is any other word)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    vocab = {'<pad>': 0, '<unk>': 1,
             **{f'w{i}': i for i in range(2, vocab_size)}}
    tok = Tokenizer(WordLevel(vocab, unk_token='<unk>'))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token='<pad>',
                                   unk_token='<unk>')


METHODS = ['kl', *methods.REGISTRY]


def random_batch(vocab, rows, tokens, answer_from=None):
    """Random token ids; with `answer_from`, a target mask over the
    positions from there on (the answer of a Q&A pair)."""
    ids = torch.randint(0, vocab, (rows, tokens), device=DEVICE)
    b = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    if answer_from is not None:
        b['target_mask'] = (torch.arange(tokens, device=DEVICE)
                            >= answer_from).long().expand(rows, -1)
    return b


def random_words(vocab, words, gen):
    """A text of `words` random words of `word_tokenizer`'s vocabulary."""
    ids = torch.randint(2, vocab, (words,), generator=gen).tolist()
    return ' '.join(f'w{i}' for i in ids)


@torch.no_grad()
def frozen_logprobs(model, b):
    """A frozen model's log-distributions on a batch (the reference)."""
    with models.reference(model) as ref:
        return vocab_logprobs(ref, b)[0]


def _role(roles, name, seed=None):
    """Role `name`, made once: a fresh adapter (the base itself), or with
    `seed` one whose LoRA B is random too, so it differs from the base as a
    trained role would."""
    if name in roles.names:
        return
    roles.add(name)
    if seed is not None:
        gen = torch.Generator().manual_seed(seed)
        state = {k: torch.randn(v.shape, generator=gen).to(v) * 0.02
                 if 'lora_B' in k else v
                 for k, v in roles.state(name).items()}
        roles.drop(name)
        roles.add(name, state)


def method_runner(method, roles, args):
    """run(steps) -> TrainResult for `method` on a new role `unlearned`
    (a copy of role `original`), with the tokens trained on and the tokens
    read by a frozen model at each step."""
    V, B, T = roles.base.config.vocab_size, args.batch, args.tokens
    forget = random_batch(V, B, T)
    retain = random_batch(V, B, T)
    lr = 1e-5
    _role(roles, 'original')
    if method == 'kl':
        model = roles.copy('original', 'unlearned')

        def loss(m, b):
            """Gradient ascent plus a KL to the reference (as KGA and Yao
            et al. add), from one forward pass of each model."""
            ref_logp = frozen_logprobs(m, b)
            logp = torch.log_softmax(m(**b).logits[:, :-1].float(), -1)
            nll = -logp.gather(-1, b['input_ids'][:, 1:, None]).mean()
            kl = torch.nn.functional.kl_div(logp, ref_logp, log_target=True,
                                            reduction='batchmean')
            return -nll + kl, {'nll': nll.item(), 'kl': kl.item()}

        def forever():
            while True:
                yield forget
        return (lambda s: train(model, loss, forever(), TrainConfig(
            lr=lr, steps=s, progress=False))), B * T, B * T
    task = methods.Task(forget=forget, retain=retain, roles=roles,
                        original='original', tokenizer=roles.tokenizer)
    trained, frozen = B * T, 0
    if 'retain' in methods.get(method).NEEDS:  # a retain row per forget row
        trained = 2 * B * T
    if method == 'loo':
        for seed, name in enumerate(('teacher0', 'teacher1')):
            _role(roles, name, seed)
        task.teachers = ['teacher0', 'teacher1']
        task.partitions = [i % 2 for i in range(B)]
    if method == 'kga':  # A_D's distributions on each retain minibatch
        for seed, name in enumerate(('A_f', 'A_n'), start=2):
            _role(roles, name, seed)
        task.new = random_batch(V, B, T)
        frozen = B * T
    if method == 'llmu':  # forget, K = 2 random answers and normal pairs
        gen = torch.Generator().manual_seed(0)
        task.forget_pairs, task.retain_pairs = (
            [{'question': random_words(V, T // 2, gen),
              'answer': random_words(V, T // 2, gen)} for _ in range(B)]
            for _ in range(2))
        trained, frozen = 4 * B * T, B * T
    if method == 'whp':  # generic labels on half the positions
        labels = forget['input_ids'].clone().cpu()
        labels[:, ::2] = -100
        task.labelled = [(ids.tolist(), lab) for ids, lab in
                         zip(forget['input_ids'].cpu(), labels)]
    model = roles.copy('original', 'unlearned')
    Config = methods.get(method).Config
    # every step timed: no early stop on KGA's alignment or LLMU's spike
    given = {'lr': lr, 'micro_batch': B, 'batch_size': B,
             'selector': 'current', 'stop_value': 0.0, 'spike_nll': 1e9}
    known = {f.name for f in fields(Config)}
    config = {k: v for k, v in given.items() if k in known}
    return (lambda s: methods.run(method, model, task, Config(
        steps=s, **config), progress=False)), trained, frozen


def measure(method, roles, args, n_params, n_train):
    """Warm up, then time `args.steps` steps; return the report."""
    run, trained, frozen = method_runner(method, roles, args)
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
    roles = build(profile)
    n_params = sum(p.numel() for p in roles.base.parameters())
    roles.add('original')
    n_train = sum(p.numel() for p in roles.state('original').values())
    chosen = METHODS if args.method == "all" else [args.method]

    def measure_one(method):
        try:
            return measure(method, roles, args, n_params, n_train)
        finally:
            roles.model.zero_grad(set_to_none=True)
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
