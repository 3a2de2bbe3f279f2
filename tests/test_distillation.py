"""The leave-one-out ensemble and KGA: soft labels, KL and JSD with padding,
the gap objective, the roles that hold every model on one base, and the
canary metrics; each against a hand computation."""
import math
import warnings

import numpy as np
import pytest
import torch

from workbench import WorkbenchError, metrics
from workbench.core.fast.head import head_kl_sum
from workbench import methods
from workbench.methods import kga, loo
from workbench.metrics.canary import exposure_from_nlls
from workbench.core.profiles import get_profile


def _logp(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g) * 3, -1)


def test_leave_one_out_averages_the_other_teachers():
    t = _logp(3, 2, 4, 5)  # 3 teachers, 2 sequences, 4 positions, vocab 5
    q = loo.ensemble_logprobs(t, excluded=[1, None])
    probs = t.exp()
    assert torch.allclose(q[0].exp(), (probs[0, 0] + probs[2, 0]) / 2,
                          atol=1e-6)
    assert torch.allclose(q[1].exp(), probs[:, 1].mean(0), atol=1e-6)
    assert torch.allclose(q.exp().sum(-1), torch.ones(2, 4), atol=1e-5)


def test_one_teacher_cannot_leave_one_out():
    with pytest.raises(WorkbenchError, match='no teacher left'):
        loo.ensemble_logprobs(_logp(1, 1, 2, 3), excluded=[0])


def test_token_kl_masks_padding_and_matches_torch():
    target, logp = _logp(2, 3, 6), _logp(2, 3, 6, seed=1)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    kl = metrics.token_kl(target, logp, mask)
    ref = torch.nn.functional.kl_div(logp[mask], target[mask],
                                     log_target=True, reduction='sum') / 4
    assert kl.item() == pytest.approx(ref.item(), rel=1e-5)
    changed = logp.clone()
    changed[1, 1:] = _logp(2, 6, seed=2)  # padded positions only
    assert metrics.token_kl(target, changed, mask).item() == \
        pytest.approx(kl.item(), rel=1e-6)
    assert metrics.token_kl(target, target, mask).item() == \
        pytest.approx(0.0, abs=1e-6)


def test_jsd_is_symmetric_bounded_and_zero_on_equal():
    p, q = _logp(2, 3, 6), _logp(2, 3, 6, seed=1)
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


def test_lpd_and_pdlp():
    out = metrics.lpd_pdlp(np.log([2.0, 4.0]), np.log([3.0, 4.0]))
    assert out['LPD'] == pytest.approx(0.5)
    assert out['LPD_relative'] == pytest.approx(0.25)
    assert out['PDLP'] == pytest.approx(0.5)


def test_kga_alignment_is_the_gap_difference(tiny):
    ids = torch.randint(1, 64, (2, 6), generator=torch.Generator()
                        .manual_seed(0))
    am = torch.ones_like(ids)
    am[1, 4:] = 0
    batch = {'input_ids': ids, 'attention_mask': am}
    target = _logp(2, 5, 64, seed=3)
    forget = {**batch, 'target_logprobs': target}
    logp, mask = kga.vocab_logprobs(tiny, batch)
    kl = metrics.token_kl(target, logp, mask).item()
    l_a, gap_f = kga.alignment(tiny, forget, gap=kl + 0.25)
    assert gap_f.item() == pytest.approx(kl, rel=1e-5)
    assert l_a.item() == pytest.approx(0.25, abs=1e-5)
    loss, parts = kga.kga_loss(tiny, {
        'forget': forget, 'gap': kl + 0.25, 'alpha': 2.0,
        'retain': {**batch, 'target_logprobs': logp.detach()}})
    # the retain KL of a model against its own distribution is zero
    assert parts['retain_kl'] == pytest.approx(0.0, abs=1e-5)
    assert loss.item() == pytest.approx(0.25, abs=1e-4)


def test_head_kl_by_chunks_has_the_whole_batch_value_and_gradient(tiny):
    """KGA's alignment KL with the output head a few positions at a time
    (`vocab_kl`) against the plain expression on the whole batch's
    logits: the same value and the same gradient, with padding, a float16
    target and chunks that do not divide the positions."""
    from workbench.core.models import decoder_and_head
    from workbench.core.scoring import vocab_kl
    ids = torch.randint(1, 64, (3, 7), generator=torch.Generator()
                        .manual_seed(1))
    am = torch.ones_like(ids)
    am[1, 5:] = 0
    am[2, 3:] = 0
    batch = {'input_ids': ids, 'attention_mask': am}
    target = _logp(3, 6, 64, seed=4).half()
    assert decoder_and_head(tiny) is not None
    tiny.train()

    def gradient(loss):
        tiny.zero_grad()
        (loss - 0.1).abs().backward()
        return torch.cat([q.grad.flatten() for q in tiny.parameters()
                          if q.grad is not None])

    logp, mask = kga.vocab_logprobs(tiny, batch)
    plain = metrics.token_kl(target, logp, mask)
    plain_grad = gradient(plain)
    for chunk in (1, 4, 128):
        decoder, head = decoder_and_head(tiny)
        hidden = decoder(**batch).last_hidden_state[:, :-1]
        kl = head_kl_sum(hidden[mask], head, target[mask],
                                 chunk) / mask.sum()
        assert kl.item() == pytest.approx(plain.item(), rel=1e-6)
        assert torch.allclose(gradient(kl), plain_grad, atol=1e-7,
                              rtol=1e-4)
    assert vocab_kl(tiny, batch, target).item() == pytest.approx(
        plain.item(), rel=1e-6)
    # a float32 target: the same, and left as it was
    target32 = target.float()
    kept = target32.clone()
    kl = vocab_kl(tiny, batch, target32)
    assert kl.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(gradient(kl), plain_grad, atol=1e-7, rtol=1e-3)
    assert torch.equal(target32, kept)


def test_bad_configs_are_refused():
    with pytest.raises(WorkbenchError, match='ensemble'):
        loo.LOOConfig(ensemble='half')
    with pytest.raises(WorkbenchError, match='retain_weight'):
        kga.KGAConfig(retain_weight=-1)


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


@pytest.fixture(scope='module')
def roles():
    from workbench.core.roles import Roles
    return Roles('smoke', progress=False)


def test_roles_on_a_model_no_deeper_than_role_layers(tiny_model_dir,
                                                     cache):
    """With adapters on every layer (2 layers, smoke adapts the top 10),
    the second role targets the same linear layers as the first, not the
    first adapter's own."""
    from workbench.core.roles import Roles
    roles = Roles(get_profile('smoke', model=tiny_model_dir), progress=False)
    roles.add('a')
    roles.add('b')
    keys = {name: {k.replace(f'.{name}.', '.') for k in
                   roles.model.state_dict() if f'.{name}.' in k}
            for name in ('a', 'b')}
    assert keys['a'] and keys['a'] == keys['b']


def test_roles_share_one_base(roles, cache):
    texts = ['The locker combination is 8 2 4 2 1 9.']
    info = roles.fit('a', texts, epochs=2)
    assert info['cached'] is False
    batch = metrics_batch(roles, texts)
    with roles.active(None) as m:
        base = m(**batch).logits
    with roles.active('a') as m:
        trained = m(**batch).logits
    assert not torch.allclose(base, trained)
    roles.copy('a', 'b')
    # only the active role is trainable
    trainable = {n for n, p in roles.model.named_parameters()
                 if p.requires_grad}
    assert trainable and all('.b.' in n for n in trainable)
    with roles.active('b') as m:
        assert torch.allclose(m(**batch).logits, trained)
    assert roles.model.active_adapter == 'b'  # restored after `active`
    # a second fit of the same texts loads the same weights from the cache
    again = roles.fit('c', texts, epochs=2)
    assert again['cached'] is True
    with roles.active('c') as m:
        assert torch.allclose(m(**batch).logits, trained)
    assert roles.model.active_adapter == 'c'
    with warnings.catch_warnings():  # dropping the active role: no warning
        warnings.simplefilter('error')
        roles.drop('c')
    assert roles.model.active_adapter in roles.names
    with pytest.raises(WorkbenchError, match="no role 'c'"):
        roles.state('c')


def metrics_batch(roles, texts):
    enc = roles.tokenizer(texts, return_tensors='pt')
    return {'input_ids': enc['input_ids'],
            'attention_mask': enc['attention_mask']}


class _TableRoles:
    """Teachers as fixed tables: log q_k(. | x) depends on the last token
    only; like `Roles.logprobs`, a batch is cut to its used width."""

    def __init__(self, teachers, vocab):
        self.tables = {f't{k}': _logp(vocab, vocab, seed=k)
                       for k in range(teachers)}

    def logprobs(self, name, batch):
        from workbench.core.data import used_width
        w = used_width(batch['attention_mask'])
        ids, am = batch['input_ids'][:, :w], batch['attention_mask'][:, :w]
        return self.tables[name][ids[:, :-1]], (am[:, 1:] & am[:, :-1]).bool()


def test_soft_labels_in_chunks_equal_the_whole_ensemble():
    roles, vocab = _TableRoles(3, 7), 7
    ids = torch.randint(vocab, (5, 6), generator=torch.Generator()
                        .manual_seed(0))
    am = torch.ones_like(ids)
    am[:3, 3:] = 0  # the first chunk of 3 rows is narrower than the batch
    forget = {'input_ids': ids, 'attention_mask': am}
    parts = [0, 1, 2, 1, 0]
    whole = loo.ensemble_logprobs(torch.stack([
        roles.logprobs(t, forget)[0] for t in roles.tables]), parts)
    chunked = loo.soft_labels(roles, list(roles.tables), forget, parts,
                              'leave-one-out', rows=3)
    mask = (am[:, 1:] & am[:, :-1]).bool()
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked[mask], whole[mask], atol=1e-6)


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


def test_token_kl_gradients_equal_the_plain_expression():
    from workbench.core.scoring import _PositionKL
    t = _logp(2, 3, 5, seed=1).double().requires_grad_()
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


def test_kga_updates_the_same_with_held_or_minibatch_targets(
        roles, cache, monkeypatch):
    from workbench.core import data
    people = data.people('forget', 2) + data.people('retain', 5)
    texts = [p['text'][:80] for p in people]  # short: a fast test
    for name, part in (('A_D', texts), ('A_f', texts[:2]),
                       ('A_n', texts[2:4])):
        roles.fit(name, part, epochs=1)
    tok = {k: data.tokenize(roles.tokenizer, v) for k, v in
           (('forget', texts[:2]), ('retain', texts[2:]),
            ('new', texts[2:4]))}
    seen = []
    runs = []
    for held in (kga.HELD_TARGETS_BYTES, 0):
        monkeypatch.setattr(kga, 'HELD_TARGETS_BYTES', held)
        task = methods.Task(forget=tok['forget'], retain=tok['retain'],
                            new=tok['new'], roles=roles, original='A_D')
        result = methods.run(
            kga, roles.copy('A_D', f'A_{held}'), task,
            kga.KGAConfig(steps=2, batch_size=2, stop_value=0.0),
            evaluate_forget=lambda m, logp, mask: seen.append(
                logp.shape) or {}, progress=False)
        runs.append([e for e in result.events if e['kind'] == 'step'])
    assert result.steps == 2 and len(seen) == 6  # before and after each
    for a, b in zip(*runs):
        assert a['retain_kl'] == pytest.approx(b['retain_kl'], abs=1e-4)
        assert a['alignment'] == pytest.approx(b['alignment'], abs=1e-4)
        assert a['retain_kl'] > 0


def test_distillation_in_micro_batches_is_the_whole_set_update(tiny):
    from workbench.core.data import full_batches
    from workbench.core.train import accumulate
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (5, 8), generator=g)
    am = torch.ones_like(ids)
    am[1, 5:] = am[3, 3:] = 0  # rows of other lengths
    data = {'input_ids': ids, 'attention_mask': am,
            'target_logprobs': _logp(5, 7, 64, seed=3)}
    tiny.requires_grad_(True)

    def grads(micro):
        tiny.zero_grad()
        it, accum = full_batches(data, micro)
        accumulate(tiny, [loo.loo_loss], it, accum)
        return [p.grad.clone() for p in tiny.parameters()]
    for a, b in zip(grads(5), grads(2)):
        assert torch.allclose(a, b, atol=1e-6)
