"""The training loop: it trains, stops, guards, restores, and repeats."""
import math

import pytest
import torch

from conftest import tiny_llama
from workbench.core.models import decoder_and_head, trainable_state
from workbench.core.scoring import token_nll
from workbench.core.train import TrainConfig, train

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
    # the run knows which evaluation's weights it put back, so their
    # metrics stand for the model as it is now
    from workbench.experiments.people import final_metrics
    assert res.restored == res.steps - 1
    assert final_metrics(res)['step'] == res.restored
    assert final_metrics(res)['retain/perplexity'] == pytest.approx(final)


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
    from workbench.core.fast import heap
    heap.configure()
    calls = []

    @heap.measuring
    def inner(x):
        calls.append(heap._depth)
        return x + 1

    @heap.measuring
    def outer(x):
        calls.append(heap._depth)
        return inner(x)

    @heap.measuring
    def fails():
        raise RuntimeError('boom')

    assert outer(1) == 2
    expected = [1, 2] if heap._LIBC is not None else [0, 0]
    assert calls == expected
    with pytest.raises(RuntimeError, match='boom'):
        fails()
    assert heap._depth == 0


def test_reuse_heap_covers_the_loop_and_is_left_behind(tiny):
    from workbench.core.fast import heap
    heap.configure()
    from workbench.core.data import full_batches
    from workbench.methods import ga
    ids = torch.randint(1, 64, (4, 8), generator=torch.Generator()
                        .manual_seed(0))
    data = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    depths = []

    def evaluate(m):
        depths.append(heap._depth)
        return {}
    it, accum = full_batches(data, 2)
    for reuse in (False, True):
        depths.clear()
        train(tiny, ga.ga_loss, it, TrainConfig(
            lr=1e-3, steps=2, grad_accum=accum, reuse_heap=reuse,
            progress=False), evaluate=evaluate)
        if heap._LIBC is not None:
            # an evaluation is a measurement: one level deeper inside
            assert depths == [2 if reuse else 1] * 3
        assert heap._depth == 0


def test_nested_heap_limits_are_restored():
    from workbench.core.fast import heap
    heap.configure()
    if heap._LIBC is None:
        pytest.skip('glibc only')
    base = heap._limit
    with heap.reusing_heap(heap.TRAINING_LIMIT):
        train_limit = heap._limit
        with heap.reusing_heap():
            assert heap._limit == max(base, 32 << 20)
        assert heap._limit == train_limit == max(
            base, heap.TRAINING_LIMIT)
    assert heap._limit == base and heap._depth == 0


def test_heap_is_trimmed_where_its_use_changes(monkeypatch):
    from workbench.core.fast import heap
    heap.configure()
    if heap._LIBC is None:
        pytest.skip('glibc only')
    trims = []

    class Libc:  # glibc, counting the trims
        def malloc_trim(self, pad):
            trims.append(heap._depth)
            return 0

        def mallopt(self, *a):
            return 1
    monkeypatch.setattr(heap, '_LIBC', Libc())
    with heap.reusing_heap(heap.TRAINING_LIMIT):
        assert trims == [1]  # the outermost block
        with heap.reusing_heap():  # an evaluation inside training
            assert trims == [1, 2]
            with heap.reusing_heap():  # a measurement inside it
                pass
            assert trims == [1, 2]  # same limit: the heap is kept
        assert trims == [1, 2, 1]  # back to training's limit
    assert trims == [1, 2, 1, 0]


def decoder(model):
    """The decoder that every forward pass, a training step's or a
    measurement's, runs (measurements skip the model's own forward)."""
    return decoder_and_head(model)[0]


def ragged_batch():
    am = torch.ones_like(IDS)
    am[1, 11:] = 0  # right-padded, as `data.tokenize` pads
    am[3, 7:] = 0
    return {'input_ids': IDS * am, 'attention_mask': am}


@pytest.mark.parametrize('lora', [False, True])
def test_a_recorded_training_forward_pass_serves_token_stats(lora):
    """With a trainable head the step runs the model; with LoRA it runs
    the decoder and the head by chunks, and records what it scored."""
    from workbench.core.fast.recorded import known_stats, recorded_forward
    from workbench.core.scoring import token_stats
    from workbench.core.models import add_lora
    model, batch = tiny_llama(), ragged_batch()
    if lora:
        model = add_lora(model, 4)
    batch['target_mask'] = torch.zeros_like(batch['input_ids'])
    batch['target_mask'][:, 9:] = 1  # the loss's targets: not all recorded
    ids, am = batch['input_ids'], batch['attention_mask']
    own = token_stats(model, ids, am)
    model.train()
    with recorded_forward(model) as rows:
        for half in (slice(0, 2), slice(2, 4)):  # two micro-batches
            token_nll(model, {k: v[half] for k, v in batch.items()})
    assert len(rows) == 4
    calls = []
    decoder(model).register_forward_hook(lambda *a: calls.append(1))
    with known_stats(model, rows):
        read = token_stats(model.eval(), ids, am)
        assert calls == []  # no forward pass of its own
        m = own['mask']
        assert torch.equal(read['mask'], m)
        assert torch.allclose(read['logprob'][m], own['logprob'][m],
                              atol=1e-5)
        assert torch.equal(read['hit'][m], own['hit'][m])
        # a text that was not in the step is measured, not guessed
        token_stats(model, IDS, torch.ones_like(IDS))
        assert calls == [1]
    token_stats(model, ids, am)  # outside, every call runs its model
    assert calls == [1, 1]


def test_a_forward_pass_with_dropout_is_not_recorded():
    from transformers import LlamaConfig, LlamaForCausalLM

    from workbench.core.fast.recorded import recorded_forward
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        attention_dropout=0.1)).train()
    with recorded_forward(model) as rows:
        token_nll(model, BATCH)
    assert rows == {}


def test_evaluating_before_the_update_runs_the_same_training():
    from workbench.core.scoring import token_stats
    batch, runs = ragged_batch(), []
    for ahead in (False, True):
        model, events = tiny_llama(), []

        def evaluate(m):
            s = token_stats(m, batch['input_ids'], batch['attention_mask'])
            return {'nll': -(s['logprob'] * s['mask']).sum().item()
                    / s['mask'].sum().item()}

        counted = []
        decoder(model).register_forward_hook(
            lambda *a: counted.append(torch.is_grad_enabled()))
        res = train(model, token_nll, forever(batch), TrainConfig(
            lr=1e-2, steps=10, progress=False, eval_before_update=ahead),
            [events.append], evaluate, lambda m: 'enough' if sum(
                e['kind'] == 'eval' for e in events) == 4 else None)
        runs.append((res, events, trainable_state(model), counted))
    (plain, ev0, w0, c0), (early, ev1, w1, c1) = runs
    assert (plain.status, plain.steps) == (early.status, early.steps) == (
        'stopped', 3)
    assert [(e['kind'], e['step']) for e in ev0] == \
        [(e['kind'], e['step']) for e in ev1]
    for a, b in zip(ev0, ev1):
        assert a.get('nll', 0) == pytest.approx(b.get('nll', 0), rel=1e-5)
        assert a.get('loss', 0) == b.get('loss', 0)
    assert same(w0, w1)  # the very same updates
    # every evaluation read a training step's forward pass; the one before
    # the stop computed a gradient that was not applied
    assert c0.count(False) == 4 and c0.count(True) == 3
    assert c1.count(False) == 0 and c1.count(True) == 4


def test_evaluating_before_the_update_still_evaluates_the_last_step():
    model, events = tiny_llama(), []
    res = train(model, token_nll, forever(BATCH), TrainConfig(
        lr=1e-2, steps=3, progress=False, eval_before_update=True),
        [events.append], lambda m: {'n': 1.0})
    assert res.status == 'completed' and res.steps == 3
    assert [(e['kind'], e['step']) for e in events] == [
        ('eval', 0), ('step', 1), ('eval', 1), ('step', 2), ('eval', 2),
        ('step', 3), ('eval', 3)]


def test_the_recorded_pass_is_not_served_with_the_adapter_off():
    from workbench.core.fast.recorded import known_stats, recorded_forward
    from workbench.core.scoring import token_stats
    from workbench.core.models import add_lora, reference
    model = add_lora(tiny_llama(), 4).train()
    with recorded_forward(model) as rows:
        token_nll(model, BATCH)
    calls = []
    decoder(model).register_forward_hook(lambda *a: calls.append(1))
    with known_stats(model, rows):
        token_stats(model, IDS)
        assert calls == []
        with reference(model) as original:  # the same object, another model
            token_stats(original, IDS)
        assert calls == [1]


@pytest.mark.parametrize('max_norm', [0.0, 1e-3, 1e6])
def test_clipping_is_clip_grad_norm_to_the_bit(max_norm):
    from workbench.core.train import clip_gradient
    ours, theirs = tiny_llama(), tiny_llama()
    for model in (ours, theirs):
        token_nll(model, BATCH).backward()
    norm = clip_gradient(ours, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(),
                                              max_norm or math.inf)
    assert torch.equal(norm, expected)
    pairs = list(zip(ours.parameters(), theirs.parameters()))
    assert all(torch.equal(a.grad, b.grad) for a, b in pairs)
    after = torch.nn.utils.get_total_norm(
        [p.grad for p in ours.parameters() if p.grad is not None])
    if max_norm == 1e-3:  # the gradient was longer, and is scaled to it
        assert norm > 1e-2 and after == pytest.approx(1e-3, rel=1e-3)
    else:
        assert torch.equal(after, norm)


def plain_logprobs(model, batch):
    """log p of every next token from the model's full logits."""
    logits = model(input_ids=batch['input_ids'],
                   attention_mask=batch['attention_mask']).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(
        -1, batch['input_ids'][:, 1:, None])[..., 0]


def test_a_frozen_head_scores_by_chunks_with_the_same_numbers_and_gradient():
    from workbench.core.data import targets
    from workbench.core.fast.head import head_logprobs
    from workbench.core.models import add_lora, decoder_and_head
    from workbench.core.scoring import token_logprobs
    model, batch = add_lora(tiny_llama(), 4).train(), ragged_batch()
    batch['target_mask'] = torch.zeros_like(batch['input_ids'])
    batch['target_mask'][:, 5:] = 1
    weights = torch.rand(4, 15, generator=torch.Generator().manual_seed(2))

    def gradient(logp, mask):
        model.zero_grad()
        (logp * mask * weights).sum().backward()  # any weighting of tokens
        return torch.cat([q.grad.flatten() for q in model.parameters()
                          if q.grad is not None])

    mask = targets(batch)
    full = plain_logprobs(model, batch)
    expected = gradient(full, mask)
    logp, got_mask = token_logprobs(model, batch)
    assert torch.equal(got_mask, mask)
    assert torch.allclose(logp[mask], full[mask], atol=1e-5)
    assert torch.all(logp[~mask] == 0)
    assert torch.allclose(gradient(logp, mask), expected, atol=1e-6,
                          rtol=1e-4)
    decoder, head = decoder_and_head(model)
    hidden = decoder(**{k: batch[k] for k in ('input_ids',
                                              'attention_mask')}
                     ).last_hidden_state[:, :-1]
    ids = batch['input_ids'][:, 1:]
    for chunk in (1, 3, 1000):  # chunks that do and do not divide
        lp, hit = head_logprobs(hidden[mask], head, ids[mask], chunk)
        assert torch.allclose(lp, full[mask], atol=1e-5)
        assert torch.equal(hit, (model(**{k: batch[k] for k in (
            'input_ids', 'attention_mask')}).logits[:, :-1].argmax(-1)
            == ids)[mask])
        with torch.no_grad():
            lp0, _ = head_logprobs(hidden[mask], head, ids[mask], chunk)
        assert torch.allclose(lp0, lp.detach())
    # a trainable head is refused, not trained wrongly
    with pytest.raises(ValueError, match='no gradient for the head'):
        head_logprobs(hidden[mask], torch.nn.Linear(32, 64), ids[mask])


def test_batches_built_on_the_cpu_go_to_the_models_device():
    """WHP's collated items, the leave-one-out partitions, LLMU's pairs:
    every batch a method builds on the CPU is moved, nested as it is, to
    the model's device by the loop (the meta device stands in for a
    GPU's)."""
    from workbench.core.train import on_device
    batch = {'input_ids': torch.ones(2, 3, dtype=torch.long),
             'labels': [torch.zeros(2), (torch.ones(1), torch.ones(2))],
             'note': 'kept'}
    moved = on_device(batch, torch.device('meta'))
    assert moved['input_ids'].device.type == 'meta'
    assert moved['labels'][0].device.type == 'meta'
    assert all(t.device.type == 'meta' for t in moved['labels'][1])
    assert isinstance(moved['labels'][1], tuple) and moved['note'] == 'kept'


def test_logprobs_by_rows_are_each_chunks_own(tiny):
    """scoring.logprobs writes each chunk of rows into one tensor: its
    rows are the chunk's own log-distributions, 0 past a chunk's width,
    in the asked dtype."""
    from workbench.core.scoring import logprobs, vocab_logprobs
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 64, (5, 9), generator=g)
    am = torch.ones_like(ids)
    am[1, 4:] = am[3, 6:] = am[4, 2:] = 0
    batch = {'input_ids': ids * am, 'attention_mask': am}
    for rows in (1, 2, 5):
        for dtype in (torch.float32, torch.float16):
            lp, mask = logprobs(tiny, batch, rows, dtype)
            assert lp.dtype == dtype and lp.shape[:2] == (5, 8)
            for i in range(0, 5, rows):
                chunk = {k: v[i:i + rows] for k, v in batch.items()}
                want, m = vocab_logprobs(tiny, chunk)
                w = want.shape[1]
                assert torch.equal(lp[i:i + rows, :w], want.to(dtype))
                assert torch.equal(mask[i:i + rows, :w], m)
                assert not lp[i:i + rows, w:].any()
                assert not mask[i:i + rows, w:].any()
