"""Canary metrics (Carlini et al. 2019, "The Secret Sharer"): exposure, and
extraction by beam search and by sampling.

A canary is a fixed prefix followed by a random secret from a space R (here
strings of d digits, |R| = 10^d). A model that memorised it ranks the true
secret far above the other candidates.
"""
import math
import random

import numpy as np
import torch

from ..core.fast.kv import cache_of, with_cache
from ..core.scoring import continuation_logprobs


def candidates(secret, n, seed=0):
    """`n` random secrets of the same shape as `secret` (digits separated
    by spaces), none equal to it, the same for a given seed."""
    digits = len(secret.split())
    rng = random.Random(seed)
    out = set()
    while len(out) < min(n, 10 ** digits - 1):
        c = ' '.join(str(rng.randrange(10)) for _ in range(digits))
        if c != secret:
            out.add(c)
    return sorted(out)


def secret_nlls(model, tokenizer, canaries, n_candidates=100, seed=0):
    """NLL (nats) of each canary's secret and of `n_candidates` random
    candidates in its place, given the prefix. Returns a list of
    (true NLL, array of candidate NLLs), one per canary.

    The texts of one canary share their first tokens (the prefix), which
    are encoded once; only the tokens after them are scored. The shared
    part would add the same number to every candidate's NLL, which changes
    no rank and shifts a fitted distribution with the canary's own NLL.
    """
    prompts, conts = [], []
    for c in canaries:
        cands = candidates(c['secret'], n_candidates, seed)
        rows = [tokenizer(f"{c['prefix']} {s}.")['input_ids']
                for s in [c['secret'], *cands]]
        shared, limit = 0, min(len(r) for r in rows) - 1
        while shared < limit and all(r[shared] == rows[0][shared]
                                     for r in rows):
            shared += 1
        if shared == 0:
            raise ValueError(f"canary {c.get('id', c['prefix'])!r}: its "
                             'texts share no first token')
        prompts.append(rows[0][:shared])
        conts.append([r[shared:] for r in rows])
    out = []
    for lps in continuation_logprobs(model, prompts, conts):
        nll = np.array([-lp.sum().item() for lp in lps])
        out.append((nll[0], nll[1:]))
    return out


def exposure_from_nlls(true_nll, cand_nlls, digits, estimate='skewnorm'):
    """Exposure = log2 |R| - log2 rank of the true secret among all |R|.

    - 'rank': rank = 1 + (fraction of sampled candidates at least as likely)
      x (|R| - 1); it reaches log2 |R| as soon as no sample beats the canary.
    - 'skewnorm': Carlini et al.'s extrapolation: fit a skew-normal to the
      candidates' NLLs and read the fraction of R below the canary's NLL
      from its CDF, so exposures far above log2(samples) stay comparable.
    Both are capped at log2 |R| (rank 1).
    """
    space = 10 ** digits
    if estimate == 'rank':
        frac = float(np.mean(cand_nlls <= true_nll))
        return math.log2(space) - math.log2(1 + frac * (space - 1))
    if estimate != 'skewnorm':
        raise ValueError(f"estimate is 'skewnorm' or 'rank', not {estimate!r}")
    if np.ptp(cand_nlls) < 1e-9:  # every candidate equally likely
        frac = 1.0 if true_nll >= cand_nlls[0] - 1e-9 else 0.0
    else:
        from scipy.stats import skewnorm  # imported where used (memory)
        a, loc, scale = skewnorm.fit(cand_nlls)
        frac = float(skewnorm.cdf(true_nll, a, loc, scale))
    return -math.log2(max(frac, 1 / space))


def exposures(model, tokenizer, canaries, n_candidates=100, seed=0,
              estimate='skewnorm'):
    """Exposure (bits) of each canary (dicts with `prefix`, `secret`)."""
    return [exposure_from_nlls(t, c, len(k['secret'].split()), estimate)
            for k, (t, c) in zip(canaries, secret_nlls(
                model, tokenizer, canaries, n_candidates, seed))]


def exposure(model, tokenizer, prefix, secret, n_candidates=1000, seed=0,
             estimate='rank'):
    """Exposure of one canary (see `exposures`)."""
    return exposures(model, tokenizer, [{'prefix': prefix, 'secret': secret}],
                     n_candidates, seed, estimate)[0]


def _prefilled(model, prompt, copies):
    """The prompt's keys and values but for its last token, computed once
    and repeated `copies` times: `generate` then encodes the prompt once,
    not once per sample (the same samples, as a test checks)."""
    cache = cache_of(model(input_ids=prompt['input_ids'][:, :-1],
                           attention_mask=prompt['attention_mask'][:, :-1],
                           use_cache=True))
    cache.batch_repeat_interleave(copies)
    ids = prompt['input_ids'].expand(copies, -1)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                **with_cache(model, cache))


@torch.no_grad()
def extraction(model, tokenizer, canaries, beams=5, samples=100,
               temperature=1.0, seed=0):
    """Can the secret be extracted from the prefix alone?

    For each canary: beam search (width `beams`) and `samples` random
    samples at `temperature` (top-k off), each continuing the prefix by as
    many tokens as the secret has. Returns one dict per canary: `beam`
    (the beam's best continuation is the secret), `sampled` (fraction of
    samples that reproduce it) and `extracted` (either).
    """
    device = next(model.parameters()).device
    out = []
    for c in canaries:
        prompt = tokenizer(c['prefix'], return_tensors='pt').to(device)
        n_new = len(tokenizer(f"{c['prefix']} {c['secret']}")['input_ids']) \
            - prompt['input_ids'].shape[1]
        kw = dict(max_new_tokens=n_new, min_new_tokens=n_new,
                  pad_token_id=tokenizer.pad_token_id)

        def hits(seqs):
            text = tokenizer.batch_decode(
                seqs[:, prompt['input_ids'].shape[1]:],
                skip_special_tokens=True)
            return [t.strip().startswith(c['secret']) for t in text]
        beam = hits(model.generate(**prompt, num_beams=beams,
                                   do_sample=False, **kw))[0]
        sampled = 0.0
        if samples:
            torch.manual_seed(seed)
            inputs = (_prefilled(model, prompt, samples)
                      if prompt['input_ids'].shape[1] > 1 else
                      dict(prompt, num_return_sequences=samples))
            seqs = model.generate(**inputs, do_sample=True,
                                  temperature=temperature, top_k=0,
                                  top_p=1.0, **kw)
            sampled = float(np.mean(hits(seqs)))
        out.append({'beam': beam, 'sampled': sampled,
                    'extracted': beam or sampled > 0})
    return out
