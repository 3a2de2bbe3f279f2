"""The leave-one-out ensemble (Liu and Kalinli): soft labels of the other
teachers, in chunks and micro-batches, each against the whole computation."""
import pytest
import torch

from workbench import WorkbenchError
from workbench.methods import loo

from conftest import random_logprobs


def test_leave_one_out_averages_the_other_teachers():
    # 3 teachers, 2 sequences, 4 positions, vocab 5
    t = random_logprobs(3, 2, 4, 5)
    q = loo.ensemble_logprobs(t, excluded=[1, None])
    probs = t.exp()
    assert torch.allclose(q[0].exp(), (probs[0, 0] + probs[2, 0]) / 2,
                          atol=1e-6)
    assert torch.allclose(q[1].exp(), probs[:, 1].mean(0), atol=1e-6)
    assert torch.allclose(q.exp().sum(-1), torch.ones(2, 4), atol=1e-5)


def test_soft_labels_stay_on_the_teachers_device():
    """The mask of the teachers kept lives where their log-probabilities
    do (a GPU's; the meta device stands in for it here)."""
    t = random_logprobs(3, 2, 4, 5).to('meta')
    q = loo.ensemble_logprobs(t, excluded=[1, None])
    assert q.device.type == 'meta' and q.shape == (2, 4, 5)


def test_one_teacher_cannot_leave_one_out():
    with pytest.raises(WorkbenchError, match='no teacher left'):
        loo.ensemble_logprobs(random_logprobs(1, 1, 2, 3), excluded=[0])


class _TableRoles:
    """Teachers as fixed tables: log q_k(. | x) depends on the last token
    only; like `Roles.logprobs`, a batch is cut to its used width."""

    def __init__(self, teachers, vocab):
        self.tables = {f't{k}': random_logprobs(vocab, vocab, seed=k)
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


def test_distillation_in_micro_batches_is_the_whole_set_update(tiny):
    from workbench.core.data import full_batches
    from workbench.core.train import accumulate
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (5, 8), generator=g)
    am = torch.ones_like(ids)
    am[1, 5:] = am[3, 3:] = 0  # rows of other lengths
    data = {'input_ids': ids, 'attention_mask': am,
            'target_logprobs': random_logprobs(5, 7, 64, seed=3)}
    tiny.requires_grad_(True)

    def grads(micro):
        tiny.zero_grad()
        it, accum = full_batches(data, micro)
        accumulate(tiny, [loo.loo_loss], it, accum)
        return [p.grad.clone() for p in tiny.parameters()]
    for a, b in zip(grads(5), grads(2)):
        assert torch.allclose(a, b, atol=1e-6)


def test_bad_configs_are_refused():
    with pytest.raises(WorkbenchError, match='ensemble'):
        loo.LOOConfig(ensemble='half')
