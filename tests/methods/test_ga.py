"""Gradient ascent as Jang et al. run it: full batches, accumulated micro-
batches, each checked against a hand computation."""
import pytest
import torch

from workbench import WorkbenchError
from workbench.core.data import full_batches
from workbench import methods
from workbench.methods import ga
from workbench.core.scoring import token_nll

from conftest import ragged_tokens, random_tokens, step_gradient


def test_full_batches_cover_the_set_once_per_step():
    data = ragged_tokens(n=7)
    it, chunks = full_batches(data, micro_batch=3)
    assert chunks == 3
    step = [next(it) for _ in range(chunks)]
    sizes = [b['input_ids'].shape[0] for b in step]
    assert sum(sizes) == 7 and max(sizes) - min(sizes) <= 1
    # each chunk is cut to its longest text and holds its share of targets
    row = 0
    for b in step:
        width = b['input_ids'].shape[1]
        real = data['attention_mask'][row:row + len(b['input_ids'])]
        assert width == int(real.sum(1).max())
        assert torch.equal(b['input_ids'],
                           data['input_ids'][row:row + len(real), :width])
        row += len(real)
    assert sum(b['share'] for b in step) == pytest.approx(1.0)
    # the next step starts again at the first sequence
    assert torch.equal(next(it)['input_ids'], step[0]['input_ids'])


@pytest.mark.parametrize('micro', [1, 2, 4])
def test_accumulated_micro_batches_give_the_full_batch_gradient(tiny, micro):
    # texts of different lengths: the chunks' means, weighed by their
    # shares of the targets, are the whole set's mean for any micro-batch
    data = ragged_tokens(n=6)
    full = step_gradient(tiny, ga.ga_loss, [data], 1)
    it, chunks = full_batches(data, micro_batch=micro)
    acc = step_gradient(tiny, ga.ga_loss,
                        [next(it) for _ in range(chunks)], chunks)
    for a, b in zip(full, acc):
        assert torch.allclose(a, b, atol=1e-6)


def test_ga_default_is_the_papers_full_batch():
    cfg = ga.GAConfig()
    assert cfg.batch_size == 0
    it, accum = ga.step_batches(random_tokens(n=5), ga.GAConfig(micro_batch=2))
    assert accum == 3
    with pytest.raises(WorkbenchError):
        ga.GAConfig(batch_size=-1)


def test_full_batch_ga_raises_the_forget_nll(tiny):
    data = random_tokens(n=4)
    before = token_nll(tiny, data).item()
    res = methods.run('ga', tiny, methods.Task(forget=data),
                      ga.GAConfig(lr=1e-2, steps=3), progress=False)
    assert res.status == 'completed' and res.steps == 3
    assert token_nll(tiny, data).item() > before + 0.1
