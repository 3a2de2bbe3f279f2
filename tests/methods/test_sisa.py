"""SISA: the slice schedule, and deletion exactly equal to retraining from
scratch."""
import numpy as np
import pytest
import torch

from workbench import WorkbenchError
from workbench.methods import sisa


def test_slice_schedule_spreads_the_epochs():
    assert sisa.slice_epochs(10, 1) == [10]
    assert sisa.slice_epochs(10, 2) == [6, 7]
    for e, r in [(8, 4), (3, 5), (20, 3)]:
        counts = sisa.slice_epochs(e, r)
        assert len(counts) == r and min(counts) >= 1
        assert sum(counts) == int(2 * e * r / (r + 1) + 1e-9)


def small_sisa(shards=3, slices=3, n=90):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=gen)
    y = (x[:, 0] + 0.3 * torch.randn(n, generator=gen) > 0).long()
    learner = sisa.HeadLearner(x, y)
    config = sisa.SISAConfig(shards=shards, slices=slices, epochs=4,
                             lr=0.05, batch_size=8)
    return sisa.SISA(learner, np.arange(n), config).fit(progress=False)


def test_deletion_equals_retraining_from_scratch():
    model = small_sisa()
    before = [dict(s) for s in model.final_states()]
    gone = [model.parts[1][2][0], model.parts[1][1][0], model.parts[2][0][0]]
    d = model.delete(gone)
    assert d.shards == {1: 2, 2: 1}
    assert 0 < d.retrain_fraction < 1
    # shard 0 was not touched, shards 1 and 2 changed
    assert all(torch.equal(before[0][k], model.final_states()[0][k])
               for k in before[0])
    assert not torch.equal(before[1]['weight'],
                           model.final_states()[1]['weight'])
    scratch = model.without(gone).fit(progress=False)
    assert sisa.same_models(model, scratch)
    assert np.array_equal(model.votes(np.arange(90)),
                          scratch.votes(np.arange(90)))
    # and a retrain that does see the points differs (the test can fail)
    assert not sisa.same_models(model, small_sisa())


def test_a_bad_deletion_request_changes_nothing():
    model = small_sisa()
    parts = [[list(s) for s in shard] for shard in model.parts]
    with pytest.raises(WorkbenchError, match='not in the training set'):
        model.delete([model.parts[0][0][0], 10_000])
    assert model.parts == parts
    with pytest.raises(WorkbenchError, match='empty shard'):
        model.delete([i for s in model.parts[0] for i in s])
    assert model.parts == parts
    with pytest.raises(WorkbenchError, match='nothing to delete'):
        model.delete([])


def test_lora_shards_delete_exactly():
    from workbench.methods.sisa import FinetuneLearner, load_classifier
    texts = [f'{w} people are {adj}.' for w in ('gay', 'old', 'blind')
             for adj in ('kind', 'vile', 'fun', 'dumb')] * 2
    labels = [int(t.split()[-1][:-1] in ('vile', 'dumb')) for t in texts]
    model, tok = load_classifier('minilm', lora_r=2)
    learner = FinetuneLearner(model, tok, texts, labels, max_length=16)
    config = sisa.SISAConfig(shards=2, slices=2, epochs=2, lr=1e-3,
                             batch_size=4)
    ens = sisa.SISA(learner, np.arange(len(texts)), config).fit(
        progress=False)
    gone = ens.parts[0][1][0]
    ens.delete([gone])
    scratch = ens.without([gone]).fit(progress=False)
    assert sisa.same_models(ens, scratch)
    # a shard's state is its adapter and head, not the backbone
    names = list(ens.final_states()[0])
    assert names and all('lora_' in n or n.startswith('head.')
                         for n in names)
