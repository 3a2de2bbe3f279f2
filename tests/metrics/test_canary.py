"""The canary metrics: exposure, secret NLLs and sampling from an encoded
prompt."""
import math

import numpy as np
import pytest
import torch

from workbench import metrics
from workbench.metrics.canary import exposure_from_nlls


def test_exposure_extrapolates_with_a_skew_normal():
    rng = np.random.default_rng(0)
    cands = rng.normal(30.0, 2.0, 200)
    middle = exposure_from_nlls(30.0, cands, 6)
    assert middle == pytest.approx(1.0, abs=0.2)  # half the space below
    far = exposure_from_nlls(16.0, cands, 6)
    # 7 standard deviations below every candidate: rank 1 of 10^6
    assert far == pytest.approx(math.log2(10 ** 6))
    mid_far = exposure_from_nlls(24.0, cands, 6)
    # 3 sd below: beyond what 200 samples can rank, not capped
    assert 8 < mid_far < math.log2(10 ** 6)
    assert exposure_from_nlls(24.0, cands, 6, 'rank') == \
        pytest.approx(math.log2(10 ** 6))


def test_sampling_from_one_encoded_prompt_equals_plain_generate(tiny):
    from workbench.metrics.canary import _prefilled
    prompt = {'input_ids': torch.tensor([[5, 9, 3, 17, 2]])}
    prompt['attention_mask'] = torch.ones_like(prompt['input_ids'])
    kw = dict(do_sample=True, top_k=0, top_p=1.0, max_new_tokens=6,
              min_new_tokens=6, pad_token_id=0)
    torch.manual_seed(3)
    plain = tiny.generate(**prompt, num_return_sequences=16, **kw)
    torch.manual_seed(3)
    with torch.no_grad():
        fast = tiny.generate(**_prefilled(tiny, prompt, 16), **kw)
    assert torch.equal(plain, fast)
    assert len({tuple(r) for r in plain[:, 5:].tolist()}) > 1  # sampled


def test_secret_nlls_differ_from_whole_text_nlls_by_one_constant(
        smol_tokenizer):
    from conftest import tiny_llama
    from workbench.metrics.canary import candidates, secret_nlls
    model = tiny_llama(vocab=len(smol_tokenizer))
    canary = {'prefix': 'The locker combination is', 'secret': '8 2 4 2'}
    true, cands = secret_nlls(model, smol_tokenizer, [canary], 12)[0]
    texts = [f"{canary['prefix']} {s}." for s in
             [canary['secret'], *candidates(canary['secret'], 12)]]
    b = smol_tokenizer(texts, return_tensors='pt', padding=True)
    s = metrics.token_stats(model, b['input_ids'], b['attention_mask'])
    whole = -(s['logprob'] * s['mask']).sum(1).numpy()
    shift = whole - np.r_[true, cands]
    assert np.allclose(shift, shift[0], atol=1e-4) and shift[0] > 0
