"""Token KL and JSD with padding, LPD and PDLP: each against a hand
computation."""
import math

import numpy as np
import pytest
import torch

from workbench import metrics

from conftest import random_logprobs


def test_token_kl_masks_padding_and_matches_torch():
    target, logp = random_logprobs(2, 3, 6), random_logprobs(2, 3, 6, seed=1)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    kl = metrics.token_kl(target, logp, mask)
    ref = torch.nn.functional.kl_div(logp[mask], target[mask],
                                     log_target=True, reduction='sum') / 4
    assert kl.item() == pytest.approx(ref.item(), rel=1e-5)
    changed = logp.clone()
    changed[1, 1:] = random_logprobs(2, 6, seed=2)  # padded positions only
    assert metrics.token_kl(target, changed, mask).item() == \
        pytest.approx(kl.item(), rel=1e-6)
    assert metrics.token_kl(target, target, mask).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_jsd_is_symmetric_bounded_and_zero_on_equal():
    p, q = random_logprobs(2, 3, 6), random_logprobs(2, 3, 6, seed=1)
    mask = torch.ones(2, 3, dtype=torch.bool)
    a, b = metrics.token_jsd(p, q, mask), metrics.token_jsd(q, p, mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert (a > 0).all() and (a <= math.log(2) + 1e-6).all()
    assert torch.allclose(metrics.token_jsd(p, p, mask), torch.zeros(2, 3),
                          atol=1e-6)
    # disjoint point masses: the maximum, log 2
    one = torch.log(torch.tensor([[[1.0, 1e-30]]]))
    two = torch.log(torch.tensor([[[1e-30, 1.0]]]))
    assert metrics.token_jsd(one, two, torch.ones(1, 1, dtype=torch.bool)
                             ).item() == pytest.approx(math.log(2), abs=1e-4)


def test_jsd_row_by_row_equals_the_batch_expression():
    p, q = random_logprobs(3, 4, 50, seed=3), random_logprobs(3, 4, 50,
                                                              seed=4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]).bool()
    logm = torch.logaddexp(p, q) - math.log(2)
    plain = 0.5 * ((p.exp() * (p - logm)).sum(-1)
                   + (q.exp() * (q - logm)).sum(-1)) * mask
    assert torch.equal(metrics.token_jsd(p, q, mask), plain)
    # a float16 reference is read in the model's precision
    assert torch.equal(metrics.token_jsd(p, q.half(), mask),
                       metrics.token_jsd(p, q.half().float(), mask))


def test_lpd_and_pdlp():
    out = metrics.lpd_pdlp(np.log([2.0, 4.0]), np.log([3.0, 4.0]))
    assert out['LPD'] == pytest.approx(0.5)
    assert out['LPD_relative'] == pytest.approx(0.25)
    assert out['PDLP'] == pytest.approx(0.5)


def test_token_kl_gradients_equal_the_plain_expression():
    from workbench.core.scoring import _PositionKL
    t = random_logprobs(2, 3, 5, seed=1).double().requires_grad_()
    z = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(_PositionKL.apply,
                                    (t, torch.log_softmax(z, -1)))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    fast = metrics.token_kl(t, torch.log_softmax(z, -1), mask)
    gt, gz = torch.autograd.grad(fast, (t, z))
    plain = ((t.exp() * (t - torch.log_softmax(z, -1))).sum(-1) * mask)
    plain = plain.sum() / mask.sum()
    assert torch.allclose(fast, plain)
    for g, want in zip((gt, gz), torch.autograd.grad(plain, (t, z))):
        assert torch.allclose(g, want)


def test_float16_references_move_jsd_and_kl_by_little():
    # sharp next-token distributions over SmolLM2's vocabulary size: far
    # apart (a KL of 14 nats) and close (0.02 nats)
    gen = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(2, 6, 49152, generator=gen) * 4, -1)
    q = torch.log_softmax(torch.randn(2, 6, 49152, generator=gen) * 4, -1)
    mask = torch.ones(2, 6, dtype=torch.bool)
    for other in (q, (p + 0.05 * q).log_softmax(-1)):
        exact = metrics.token_jsd(p, other, mask)
        half = metrics.token_jsd(p, other.half().float(), mask)
        assert (exact - half).abs().max() < 1e-4
        kl = metrics.token_kl(other, p, mask)
        # float16 rounds each log-probability by a relative 5e-4 at most
        assert abs(metrics.token_kl(other.half(), p, mask) - kl) < \
            1e-4 + 1e-4 * kl
