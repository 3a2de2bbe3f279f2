"""Benchmarks that print ratios measured in one run (ours against a baseline).

    python bench/run.py --out bench/results.json

- loop_throughput_ratio: steps/s of `workbench.core.train.train` over steps/s of
  a bare PyTorch loop (same model, batch, optimizer, loss). Goal >= 0.95.
- el_speedup: the naive EL_10 loop (one greedy generation per prefix) time
  over the batched, shortcut EL_10 time, with identical values; on the
  memorised forget people and on unseen people. Goal >= 10.
- sisa_deletion_vs_retrain_times_shards: the mean time of a SISA deletion
  request (retrain one shard from its checkpoint) over the time of a full
  retrain of all S shards, times S; LoRA fine-tuning of MiniLM per shard.
  1.0 is a whole shard retrained at no overhead; slices make it lower.
  Goal <= 1.3.
- head_memory_ratio: what a LoRA training step on two of the people's bios
  (the `cpu` profile's micro-batch) adds to the memory, scoring with the
  output head a chunk of positions at a time (`scoring.token_logprobs`) over
  scoring with the whole batch's logits; each way in a fresh process, with
  the time of a step each way (`head_time_ratio`, goal about 1). The
  notebooks that fine-tune SmolLM2 peak in such a step.
- checkpointing_memory_ratio: the same step's added memory with the `cpu`
  profile's gradient checkpointing over every layer's activations held
  (goal < 1; Binder's 2 GiB), and its time (`checkpointing_time_ratio`,
  goal < 1.5: one more forward pass).
- notebooks (`--only notebooks`, about an hour and a half on 2 cores):
  every notebook run headless as a user runs it (`python -m workbench run
  NAME`), on `smoke` (their sum is the smoke suite's time) and on `cpu`,
  each with its wall time, the kernel's peak memory and the claims from its
  record, and what the cache held before it (a first run trains the models
  a later one finds cached). Goal on `cpu`: under 5 minutes and 2 GB each.
  `--profiles cpu --notebooks 03,07` runs a part; the JSON is written after
  every notebook, and a notebook that fails is recorded and the run goes on
  (the exit status says so at the end).

Timings are interleaved and repeated so that both sides see the same noise
of a shared machine.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from workbench import WorkbenchError, metrics
from workbench.core import data, models, record
from workbench.core.paths import NOTEBOOK_DIR, cache_dir
from workbench.core.profiles import get_profile
from workbench.core.scoring import token_nll
from workbench.core.train import TrainConfig, train


def bare_loop(model, batch, steps, lr):
    """The baseline: the loop anyone would write by hand."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        token_nll(model, batch).backward()
        opt.step()


def loop_ratio(model, tok, steps=6, repeats=3):
    """Steps/s of our loop over the bare loop, full fine-tuning SmolLM2."""
    texts = [r['text'] for r in data.people('retain', 4)]
    batch = data.tokenize(tok, texts)
    lr = 1e-6

    def forever():
        while True:
            yield batch

    ours, bare = [], []
    bare_loop(model, batch, 1, lr)  # warm-up
    for _ in range(repeats):
        t = time.perf_counter()
        bare_loop(model, batch, steps, lr)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        train(model, token_nll, forever(),
              TrainConfig(lr=lr, steps=steps, progress=False))
        ours.append(time.perf_counter() - t)
    return min(bare) / min(ours), {'bare_s': min(bare), 'ours_s': min(ours),
                                   'steps': steps,
                                   'batch': list(batch['input_ids'].shape)}


# one side of the head benchmark, in a process of its own: the step's
# added memory is the peak resident set (reset through clear_refs) over
# the resident set before it
HEAD_STEP = """
import gc, json, sys, time
from workbench.core import data, models, scoring
from workbench.core.profiles import get_profile
if sys.argv[1] == 'logits':
    scoring.decoder_and_head = lambda model: None  # the whole batch's logits
# 'held': every layer's activations held for the backward pass
profile = get_profile('cpu', gradient_checkpointing=sys.argv[1] != 'held')
model, tok = models.load_causal_lm(profile.model, profile)
model = models.prepare(model, profile).train()
texts = [r['text'] for r in data.people('retain', profile.micro_batch)]
batch = data.tokenize(tok, texts)


def status(key):
    with open('/proc/self/status') as f:
        line = next(x for x in f if x.startswith(key + ':'))
    return int(line.split()[1]) * 1024


added, seconds = [], []
for i in range(4):  # the first is a warm-up
    model.zero_grad(set_to_none=True)
    gc.collect()
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # VmHWM := VmRSS
    before, t = status('VmRSS'), time.perf_counter()
    scoring.token_nll(model, batch).backward()
    seconds.append(time.perf_counter() - t)
    added.append(status('VmHWM') - before)
print(json.dumps({'added': added[1:], 'seconds': seconds[1:],
                  'batch': list(batch['input_ids'].shape)}))
"""


def head_memory(repeats=2):
    """Memory a LoRA step of the `cpu` profile adds, and its time: the
    head by chunks over the whole batch's logits, and checkpointed over
    every layer's activations held ('held'), each side in fresh processes,
    interleaved."""
    runs = {'chunks': [], 'logits': [], 'held': []}
    for _ in range(repeats):
        for side in runs:
            out = subprocess.run([sys.executable, '-c', HEAD_STEP, side],
                                 capture_output=True, text=True, check=True)
            runs[side].append(json.loads(out.stdout.splitlines()[-1]))
    added = {k: min(min(r['added']) for r in v) for k, v in runs.items()}
    secs = {k: min(min(r['seconds']) for r in v) for k, v in runs.items()}
    return added['chunks'] / added['logits'], secs['chunks'] / secs[
        'logits'], {'chunks_mb': added['chunks'] / 1e6,
                    'logits_mb': added['logits'] / 1e6,
                    'chunks_s': secs['chunks'], 'logits_s': secs['logits'],
                    'held_mb': added['held'] / 1e6, 'held_s': secs['held'],
                    'batch': runs['chunks'][0]['batch']}


def el_speedup(model, tok, texts, max_tokens=48):
    """Naive EL_10 time over batched EL_10 time; values must be equal."""
    enc = data.tokenize(tok, texts, max_length=max_tokens)
    pad = tok.pad_token_id
    t = time.perf_counter()
    fast = metrics.extraction_likelihood(model, enc['input_ids'], 10, 1,
                                         enc['attention_mask'])
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    naive = metrics.extraction_likelihood_naive(model, enc['input_ids'], 10,
                                                1, enc['attention_mask'], pad)
    naive_s = time.perf_counter() - t
    return naive_s / fast_s, {
        'fast_s': fast_s, 'naive_s': naive_s,
        'identical': bool(torch.equal(fast, naive)),
        'max_abs_diff': float((fast - naive).abs().max()),
        'el_10': fast.tolist(), 'sequences': len(texts),
        'tokens': max_tokens}


def sisa_deletion(n_train=600, shards=4, slices=4, epochs=3, requests=6):
    """Mean deletion time / full-retrain time x S, fine-tuned shards."""
    import numpy as np

    from workbench.experiments import fairsisa as toxicity
    from workbench.methods import sisa
    setup = toxicity.setup(get_profile('cpu'), mode='finetune',
                           progress=False)
    rng = np.random.default_rng(0)
    train_idx = rng.choice(setup.split['train'], n_train, replace=False)
    config = sisa.SISAConfig(shards=shards, slices=slices, epochs=epochs,
                             lr=1e-3, batch_size=32)
    model = sisa.SISA(setup.learner, train_idx, config)
    t = time.perf_counter()
    model.fit(progress=False)
    full_s = time.perf_counter() - t
    times, work = [], []
    for position in rng.choice(train_idx, requests, replace=False):
        d = model.delete([position])
        times.append(d.seconds)
        work.append(d.retrain_fraction)
    ratio = float(np.mean(times)) / full_s * shards
    return ratio, {'full_retrain_s': full_s, 'deletion_s': times,
                   'work_fraction_times_shards': float(np.mean(work)) * shards,
                   'shards': shards, 'slices': slices, 'epochs': epochs,
                   'train_examples': n_train}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', default='bench/results.json')
    parser.add_argument('--only', choices=['loop', 'el', 'sisa', 'head',
                                           'notebooks'],
                        help='run one benchmark (and keep the others '
                             'already in --out)')
    parser.add_argument('--profiles', default='smoke,cpu',
                        help='notebooks: the profiles, in order')
    parser.add_argument('--notebooks', default='',
                        help='notebooks: a comma list of names or numbers '
                             '(03,07); all of them when empty')
    parser.add_argument('--seeds', type=seeds_type, default=None,
                        help='notebooks: run each once per seed (0,1,2); '
                             'each claim then counts the seeds it held in')
    args = parser.parse_args()
    try:
        names = notebook_names(args.notebooks)
        profiles = [p for p in args.profiles.split(',') if p]
        for p in profiles:
            get_profile(p)
    except (WorkbenchError, ValueError) as e:
        parser.exit(2, f'error: {e}\n')
    torch.manual_seed(0)
    out = Path(args.out)
    results = json.loads(out.read_text()) if args.only and out.exists() \
        else {}
    if args.only in (None, 'sisa'):
        ratio, detail = sisa_deletion()
        results['sisa_deletion_vs_retrain_times_shards'] = {
            'value': ratio, 'goal': '<= 1.3', **detail}
    if args.only in (None, 'loop'):
        loop_benchmark(results)
    if args.only in (None, 'el'):
        el_benchmark(results)
    if args.only in (None, 'head'):
        head_benchmark(results)
    failed = []
    if args.only in (None, 'notebooks'):
        failed = notebook_benchmark(results, names, profiles, out,
                                    args.seeds)
    report(results, out)
    if failed:
        raise SystemExit('failed: ' + ', '.join(failed))


def seeds_type(text):
    """argparse's type for --seeds (`record.parse_seeds`)."""
    try:
        return record.parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def notebook_names(wanted=''):
    """The notebooks' names, all of them or those `wanted` names by name
    or number."""
    names = sorted(p.stem for p in NOTEBOOK_DIR.glob('[0-9][0-9]_*.ipynb'))
    if not wanted:
        return names
    chosen = []
    for w in (w.strip() for w in wanted.split(',') if w.strip()):
        match = [n for n in names if n == w or n.split('_')[0] == w]
        if not match:
            raise ValueError(f'no notebook {w!r}; there are '
                             f'{", ".join(names)}')
        chosen += match
    return chosen


def cached_entries():
    """What the cache holds now (`models/smollm2-135m`, `implant/<key>`,
    ...): a notebook's time depends on what it finds there."""
    root = cache_dir()
    return sorted(f'{kind.name}/{entry.name}' for kind in root.iterdir()
                  if kind.is_dir() and kind.name != 'locks'
                  for entry in kind.iterdir())


def run_notebook(name, profile, seeds=None):
    """One notebook run as a user runs it (once per seed with `seeds`): its
    wall minutes, the kernel's peak memory and its claims from the record
    (with seeds, how many of them each held in), what was cached before,
    or the end of its error output when it failed."""
    before = cached_entries()
    many = ['--seeds', ','.join(map(str, seeds))] if seeds else []
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, '-m', 'workbench', 'run', name, '--profile',
             profile, '--out', out, *many], capture_output=True, text=True)
        entry = {'minutes': (time.perf_counter() - t) / 60,
                 'cached_before': before}
        saved = (record.seeds_path(out, name) if seeds
                 else Path(out) / f'{name}.json')
        if proc.returncode != 0 or not saved.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return {**entry, 'failed': lines[-1] if lines else
                    f'exit status {proc.returncode}',
                    'stderr_tail': proc.stderr[-2000:]}
        rec = json.loads(saved.read_text())
    if seeds:
        claims = {c['id']: {'holds_in': c['holds_in'], 'seeds': c['seeds']}
                  for c in rec['claims']}
        entry['minutes'] /= len(seeds)  # a run's, as without seeds
    else:
        claims = {c['id']: c['holds'] for c in rec['claims']}
    # the record's MiB (ru_maxrss) in GB, 10^9 bytes, the goal's unit
    return {**entry, 'peak_gb': rec['peak_rss_mb'] * 2**20 / 1e9,
            'claims': claims}


def notebook_benchmark(results, names, profiles, out, seeds=None):
    """Runs the notebooks, each profile in turn, and writes `out` after
    each one, so that a stopped or failing run keeps what it measured.
    Returns the runs that failed."""
    failed = []
    for profile in profiles:
        for name in names:
            entry = run_notebook(name, profile, seeds)
            results.setdefault('notebooks', {}).setdefault(
                profile, {})[name] = entry
            summarise(results)
            save(results, out)
            if 'failed' in entry:
                failed.append(f'{name} ({profile})')
                print(f'{name} {profile} FAILED after '
                      f'{entry["minutes"]:.1f} min: {entry["failed"]}',
                      flush=True)
            else:
                print(f'{name} {profile} {entry["minutes"]:.1f} min, '
                      f'{entry["peak_gb"]:.2f} GB', flush=True)
    return failed


def summarise(results):
    """The summary rows, from the per-notebook runs: the smoke suite's
    time, the slowest and the largest notebook on `cpu`."""
    runs = results.get('notebooks', {})
    names = notebook_names()
    smoke = runs.get('smoke', {})
    if smoke:
        results['smoke_suite_minutes'] = {
            'value': sum(v['minutes'] for v in smoke.values()), 'goal': '',
            'complete': all(n in smoke and 'failed' not in smoke[n]
                            for n in names)}
    cpu = {k: v for k, v in runs.get('cpu', {}).items() if 'failed' not in v}
    if cpu:
        slowest = max(cpu, key=lambda k: cpu[k]['minutes'])
        largest = max(cpu, key=lambda k: cpu[k]['peak_gb'])
        results['notebook_cpu_minutes_max'] = {
            'value': cpu[slowest]['minutes'], 'goal': '< 5',
            'notebook': slowest,
            'over_goal': sorted(k for k, v in cpu.items()
                                if v['minutes'] >= 5)}
        results['notebook_cpu_peak_gb_max'] = {
            'value': cpu[largest]['peak_gb'], 'goal': '< 2',
            'notebook': largest,
            'over_goal': sorted(k for k, v in cpu.items()
                                if v['peak_gb'] >= 2)}


def loop_benchmark(results):
    model, tok = models.load_causal_lm('smollm2-135m')
    ratio, detail = loop_ratio(model, tok)
    results['loop_throughput_ratio'] = {'value': ratio, 'goal': '>= 0.95',
                                        **detail}
    del model


def el_benchmark(results):
    from workbench.experiments.people import people_setup
    setup = people_setup(get_profile('smoke'), progress=False)
    forget = [r['text'] for r in setup.rows['forget'][:3]]
    unseen = [r['text'] for r in setup.rows['unseen'][:2]]
    ratio, detail = el_speedup(setup.model, setup.tokenizer, forget)
    results['el_speedup'] = {'value': ratio, 'goal': '>= 10',
                             'data': 'memorised forget people', **detail}
    ratio, detail = el_speedup(setup.model, setup.tokenizer, unseen)
    results['el_speedup_unseen'] = {'value': ratio, 'data': 'unseen people',
                                    **detail}


def head_benchmark(results):
    memory, seconds, detail = head_memory()
    results['head_memory_ratio'] = {'value': memory, 'goal': '< 1',
                                    **detail}
    results['head_time_ratio'] = {'value': seconds, 'goal': 'about 1',
                                  'chunks_s': detail['chunks_s'],
                                  'logits_s': detail['logits_s']}
    results['checkpointing_memory_ratio'] = {
        'value': detail['chunks_mb'] / detail['held_mb'], 'goal': '< 1',
        'chunks_mb': detail['chunks_mb'], 'held_mb': detail['held_mb']}
    results['checkpointing_time_ratio'] = {
        'value': detail['chunks_s'] / detail['held_s'], 'goal': '< 1.5',
        'chunks_s': detail['chunks_s'], 'held_s': detail['held_s']}


def save(results, out):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


def report(results, out):
    """Write the JSON and print the tables."""
    save(results, out)
    print(f'{"benchmark":38s} {"value":>8s}  goal     detail')
    for k, v in results.items():
        if k == 'notebooks':
            continue
        extra = {x: v[x] for x in ('identical', 'bare_s', 'ours_s', 'fast_s',
                                   'naive_s', 'full_retrain_s',
                                   'work_fraction_times_shards', 'notebook',
                                   'chunks_mb', 'logits_mb', 'chunks_s',
                                   'logits_s', 'held_mb', 'held_s',
                                   'complete') if x in v}
        extra = ', '.join(f'{a}={b:.2f}' if isinstance(b, float)
                          else f'{a}={b}' for a, b in extra.items())
        print(f'{k:38s} {v["value"]:8.2f}  {v.get("goal", ""):8s} {extra}')
    for profile, runs in results.get('notebooks', {}).items():
        print(f'\n{"notebook (" + profile + ")":38s} {"min":>8s} {"GB":>6s}'
              '  claims that do not hold')
        for k, v in runs.items():
            if 'failed' in v:
                print(f'{k:38s} {v["minutes"]:8.1f}  FAILED: {v["failed"]}')
                continue
            off = ', '.join(c for c, holds in v['claims'].items()
                            if not holds)
            print(f'{k:38s} {v["minutes"]:8.1f} {v["peak_gb"]:6.2f}  {off}')
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
