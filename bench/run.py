"""Benchmarks that print ratios measured in one run (ours against a baseline).

    python bench/run.py --out bench/results.json

- loop_throughput_ratio: steps/s of `workbench.train.train` over steps/s of
  a bare PyTorch loop (same model, batch, optimizer, loss). Goal >= 0.95.
- el_speedup: the naive EL_10 loop (one greedy generation per prefix) time
  over the batched, shortcut EL_10 time, with identical values; on the
  memorised forget people and on unseen people. Goal >= 10.

Timings are interleaved and repeated so that both sides see the same noise
of a shared machine.
"""
import argparse
import json
import time
from pathlib import Path

import torch

from workbench import data, metrics, models
from workbench.profiles import get_profile
from workbench.train import TrainConfig, token_nll, train


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


def el_speedup(model, tok, texts, max_tokens=48):
    """Naive EL_10 time over batched EL_10 time; values must be equal."""
    enc = data.tokenize(tok, texts, max_length=max_tokens)
    pad = tok.pad_token_id
    t = time.perf_counter()
    fast = metrics.extraction_likelihood(model, enc['input_ids'], 10, 1,
                                         enc['attention_mask'], pad)
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--out', default='bench/results.json')
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}

    model, tok = models.load_causal_lm('smollm2-135m')
    ratio, detail = loop_ratio(model, tok)
    results['loop_throughput_ratio'] = {'value': ratio, 'goal': '>= 0.95',
                                        **detail}
    del model

    from workbench.experiment import people_setup
    setup = people_setup(get_profile('smoke'), progress=False)
    forget = [r['text'] for r in setup.rows['forget'][:3]]
    unseen = [r['text'] for r in setup.rows['unseen'][:2]]
    ratio, detail = el_speedup(setup.model, setup.tokenizer, forget)
    results['el_speedup'] = {'value': ratio, 'goal': '>= 10',
                             'data': 'memorised forget people', **detail}
    ratio, detail = el_speedup(setup.model, setup.tokenizer, unseen)
    results['el_speedup_unseen'] = {'value': ratio, 'data': 'unseen people',
                                    **detail}

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f'{"benchmark":24s} {"ratio":>8s}  goal     detail')
    for k, v in results.items():
        extra = {x: v[x] for x in ('identical', 'bare_s', 'ours_s', 'fast_s',
                                   'naive_s') if x in v}
        extra = ', '.join(f'{a}={b:.2f}' if isinstance(b, float)
                          else f'{a}={b}' for a, b in extra.items())
        print(f'{k:24s} {v["value"]:8.2f}  {v.get("goal", ""):8s} {extra}')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
