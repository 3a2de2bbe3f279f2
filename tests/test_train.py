"""The training loop: it trains, stops, guards, restores, and repeats."""
import math

import pytest
import torch

from conftest import tiny_llama
from workbench.models import trainable_state
from workbench.train import TrainConfig, token_nll, train

IDS = torch.randint(1, 64, (4, 16), generator=torch.Generator().manual_seed(0))
BATCH = {'input_ids': IDS, 'attention_mask': torch.ones_like(IDS)}


def forever(batch):
    while True:
        yield batch


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_loss_falls_and_events_flow():
    model, events = tiny_llama(), []
    cfg = TrainConfig(lr=1e-2, steps=30, progress=False)
    res = train(model, token_nll, forever(BATCH), cfg, [events.append])
    assert res.status == 'completed' and res.steps == 30
    losses = [e['loss'] for e in events if e['kind'] == 'step']
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]


def test_same_seed_same_weights():
    runs = []
    for _ in range(2):
        model = tiny_llama()
        train(model, token_nll, forever(BATCH),
              TrainConfig(lr=1e-2, steps=5, progress=False))
        runs.append(trainable_state(model))
    assert same(*runs)


def test_nan_loss_stops_and_restores():
    model, calls = tiny_llama(), []

    def loss_fn(m, batch):
        calls.append(1)
        loss = token_nll(m, batch)
        return loss * math.nan if len(calls) == 4 else loss

    snapshots = []
    cfg = TrainConfig(lr=1e-2, steps=10, progress=False)
    res = train(model, loss_fn, forever(BATCH), cfg,
                [lambda e: snapshots.append(trainable_state(model))])
    assert res.status == 'diverged' and res.steps == 3
    assert 'not applied' in res.message
    assert same(trainable_state(model), snapshots[-1])


def test_guard_bound_restores_last_good_evaluation():
    model = tiny_llama()

    def evaluate(m):
        return {'retain/perplexity': math.exp(token_nll(m, BATCH).item())}

    # gradient ascent with a big step: perplexity explodes past the bound
    cfg = TrainConfig(lr=5e-2, steps=20, progress=False,
                      guard_bound=2 * math.exp(token_nll(model,
                                                         BATCH).item()))
    res = train(model, lambda m, b: -token_nll(m, b), forever(BATCH), cfg,
                evaluate=evaluate)
    assert res.status == 'diverged' and res.steps < 20
    final = math.exp(token_nll(model, BATCH).item())
    assert final <= cfg.guard_bound


def test_interrupt_restores_a_consistent_model():
    model, calls = tiny_llama(), []
    states = []

    def loss_fn(m, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return token_nll(m, batch)

    cfg = TrainConfig(lr=1e-2, steps=10, progress=False)
    res = train(model, loss_fn, forever(BATCH), cfg,
                [lambda e: states.append(trainable_state(model))])
    assert res.status == 'interrupted' and res.steps == 2
    assert same(trainable_state(model), states[-1])


def test_should_stop_ends_early():
    model = tiny_llama()
    cfg = TrainConfig(lr=1e-2, steps=50, progress=False)
    res = train(model, token_nll, forever(BATCH), cfg,
                evaluate=lambda m: {'nll': token_nll(m, BATCH).item()},
                should_stop=lambda s: 'low' if s['nll'] < 3.5 else None)
    assert res.status == 'stopped' and 0 < res.steps < 50
    assert res.last('nll') < 3.5


def test_a_list_of_loss_terms_trains_as_their_sum():
    def first(m, b):
        return m(b['x']).pow(2).mean(), {'first': 1.0}

    def second(m, b):
        return (m(b['x']) - 1).abs().mean()

    def both(m, b):
        return first(m, b)[0] + second(m, b)

    weights = []
    for loss in ([first, second], both):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        start = model.weight.detach().clone()
        batches = iter([{'x': torch.randn(8, 4)} for _ in range(3)])
        result = train(model, loss, batches,
                       TrainConfig(lr=0.05, steps=3, progress=False))
        weights.append(model.weight.detach().clone())
        assert result.steps == 3
        # the weights moved: up to three Adam steps of about lr each
        assert (weights[-1] - start).abs().max() > 0.05
    assert torch.allclose(*weights, atol=1e-6)
    assert result.events[0]['loss'] > 0


def test_measuring_nests_and_always_restores():
    import workbench
    calls = []

    @workbench.measuring
    def inner(x):
        calls.append(workbench._depth)
        return x + 1

    @workbench.measuring
    def outer(x):
        calls.append(workbench._depth)
        return inner(x)

    @workbench.measuring
    def fails():
        raise RuntimeError('boom')

    assert outer(1) == 2
    expected = [1, 2] if workbench._LIBC is not None else [0, 0]
    assert calls == expected
    with pytest.raises(RuntimeError, match='boom'):
        fails()
    assert workbench._depth == 0


def test_reuse_heap_covers_the_loop_and_is_left_behind(tiny):
    import workbench
    from workbench.data import full_batches
    from workbench.methods import ga
    ids = torch.randint(1, 64, (4, 8), generator=torch.Generator()
                        .manual_seed(0))
    data = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    depths = []

    def evaluate(m):
        depths.append(workbench._depth)
        return {}
    it, accum = full_batches(data, 2)
    for reuse in (False, True):
        depths.clear()
        train(tiny, ga.ga_loss, it, TrainConfig(
            lr=1e-3, steps=2, grad_accum=accum, reuse_heap=reuse,
            progress=False), evaluate=evaluate)
        if workbench._LIBC is not None:
            # an evaluation is a measurement: one level deeper inside
            assert depths == [2 if reuse else 1] * 3
        assert workbench._depth == 0


def test_nested_heap_limits_are_restored():
    import workbench
    if workbench._LIBC is None:
        pytest.skip('glibc only')
    base = workbench._limit
    with workbench.reusing_heap(workbench.TRAINING_LIMIT):
        train_limit = workbench._limit
        with workbench.reusing_heap():
            assert workbench._limit == max(base, 32 << 20)
        assert workbench._limit == train_limit == max(
            base, workbench.TRAINING_LIMIT)
    assert workbench._limit == base and workbench._depth == 0
