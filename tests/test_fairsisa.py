"""FairSISA: the equalized-odds LPs on predictions whose optimum is known,
SISA's exact deletion, and notebook 01 on the smoke profile."""
import itertools

import numpy as np
import pytest
import torch

from workbench import WorkbenchError
from workbench.methods import sisa
from workbench.methods import fairsisa
from workbench.metrics.fairness import fairness_report, group_rates


def labelled(n_per_cell, seed=0):
    """Groups 0/1 with labels 0/1, n_per_cell examples of each pair."""
    y = np.repeat([0, 1, 0, 1], n_per_cell)
    a = np.repeat([0, 0, 1, 1], n_per_cell)
    return y, a


def test_lp_keeps_a_perfect_fair_predictor():
    y, a = labelled(50)
    pred = fairsisa.hps(y, y, a)
    assert pred.cost == pytest.approx(0)
    assert np.allclose(pred.proba(y, a), y)


def test_lp_matches_the_hand_solved_optimum():
    # group 0: perfect. group 1: TPR 1, FPR 0.5. Equalized odds confines
    # both to group 1's region, whose best corner (c_FP = c_FN = 1, more
    # positives than half the negatives) is (FPR, TPR) = (0.5, 1) for all
    y, a = labelled(40)
    yhat = y.copy()
    neg1 = np.flatnonzero((a == 1) & (y == 0))
    yhat[neg1[:20]] = 1
    pred = fairsisa.hps(yhat, y, a)
    rep = fairness_report(y, pred.proba(yhat, a), a)
    for g in (0, 1):
        assert rep[f'TPR[{g}]'] == pytest.approx(1, abs=1e-6)
        assert rep[f'FPR[{g}]'] == pytest.approx(0.5, abs=1e-6)
    assert pred.cost == pytest.approx(0.5 * np.mean(y == 0))
    assert rep['equalized_odds_difference'] == pytest.approx(0, abs=1e-6)


def test_joint_reads_the_right_shard_for_each_group():
    # shard 0 is right on group 0 and a coin on group 1; shard 1 the
    # reverse. The joint LP over the vote pattern is perfect and fair; a
    # vote of two (ties are 0) cannot be
    rng = np.random.default_rng(0)
    y, a = labelled(100)
    coin = rng.integers(0, 2, len(y))
    votes = np.stack([np.where(a == 0, y, coin), np.where(a == 1, y, coin)],
                     1)
    costs = {}
    for v in fairsisa.VARIANTS:
        fair = fairsisa.FairEnsemble(fairsisa.FairSISAConfig(variant=v))
        fair.fit(votes, y, a)
        rep = fairness_report(y, fair.proba(votes, a), a)
        costs[v] = 1 - rep['accuracy']
        if v != 'shards_then_vote':  # the LP's own constraint, on its data
            assert rep['equalized_odds_difference'] < 1e-6
    assert costs['joint'] == pytest.approx(0, abs=1e-6)
    assert costs['vote_then_fair'] > 0.2
    assert costs['joint'] <= min(costs.values())


def test_joint_is_never_worse_than_the_vote_on_its_data():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 600)
    a = rng.integers(0, 2, 600)
    votes = (rng.random((600, 3)) < 0.25 + 0.5 * y[:, None]
             + 0.1 * a[:, None]).astype(int)
    cost = {}
    for v in ('vote_then_fair', 'joint'):
        fair = fairsisa.FairEnsemble(fairsisa.FairSISAConfig(variant=v))
        cost[v] = fair.fit(votes, y, a).predictors[0].cost
    assert cost['joint'] <= cost['vote_then_fair'] + 1e-9
    count = fairsisa.FairEnsemble(fairsisa.FairSISAConfig(signal='count'))
    assert count.fit(votes, y, a).predictors[0].table.shape == (4, 2)


def test_vote_tail_is_the_probability_of_a_majority():
    p = np.array([[0.2, 0.7, 0.9, 0.5], [1.0, 0.0, 1.0, 0.0]])
    for row, probs in enumerate(p):
        exact = 0.0
        for bits in itertools.product([0, 1], repeat=4):
            if sum(bits) > 2:
                exact += np.prod([q if b else 1 - q
                                  for q, b in zip(probs, bits)])
        assert fairsisa.vote_tail(p)[row] == pytest.approx(exact)


def test_hps_agrees_with_fairlearn_threshold_optimizer():
    rng = np.random.default_rng(2)
    n = 2000
    a = rng.integers(0, 2, n)
    y = (rng.random(n) < 0.3 + 0.3 * a).astype(int)
    yhat = np.where(rng.random(n) < 0.8 - 0.15 * a, y, 1 - y)
    ours = fairsisa.hps(yhat, y, a)
    theirs = fairsisa.fairlearn_hps(yhat, y, a, yhat, a)
    r_ours = fairness_report(y, ours.proba(yhat, a), a)
    r_theirs = fairness_report(y, theirs, a)
    assert r_ours['accuracy'] == pytest.approx(r_theirs['accuracy'], abs=0.01)
    assert fairness_report(y, yhat, a)['equalized_odds_difference'] > 0.1
    assert r_ours['equalized_odds_difference'] < 1e-6
    assert r_theirs['equalized_odds_difference'] < 0.02


def test_expected_metrics_of_a_randomised_predictor():
    rng = np.random.default_rng(3)
    y, a = rng.integers(0, 2, 300), rng.integers(0, 2, 300)
    p = rng.random(300)
    draws = (rng.random((3000, 300)) < p).astype(int)
    rep = fairness_report(y, p, a)
    assert rep['accuracy'] == pytest.approx((draws == y).mean(), abs=0.005)
    hard = fairness_report(y, draws[0], a)
    table = group_rates(y, draws[0], a)
    assert hard['TPR[1]'] == pytest.approx(table.loc[1, 'TPR'])
    assert table['n'].sum() == 300


def test_bad_inputs_get_clear_errors():
    y, a = labelled(10)
    with pytest.raises(WorkbenchError, match='no positive'):
        fairsisa.hps(y[y == 0], y[y == 0], a[y == 0])
    with pytest.raises(WorkbenchError, match='variant'):
        fairsisa.FairSISAConfig(variant='best')
    pred = fairsisa.hps(y, y, a)
    with pytest.raises(WorkbenchError, match='group 7'):
        pred.proba(np.array([1]), np.array([7]))
    with pytest.raises(WorkbenchError, match='in \\[0, 1\\]'):
        fairness_report([0, 1], [0.5, 2.0], [0, 1])
    with pytest.raises(WorkbenchError, match='epochs'):
        sisa.SISAConfig(slices=4, epochs=1)


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


@pytest.mark.notebooks
def test_fairsisa_notebook_reproduces_the_claims(smoke_record):
    rec = smoke_record('01_fairsisa')
    m = rec['metrics']
    eod = m['test/equalized_odds_difference']
    # the vote is unfair, and the chosen FairSISA variant removes most of it
    assert eod['before'] > 0.1
    assert eod['after'] < 0.5 * eod['before']
    # at a small price in accuracy at most
    assert m['test/accuracy']['after'] > m['test/accuracy']['before'] - 0.05
    # a deletion retrains one shard from a checkpoint: at most 1/S
    frac = m['deletion/retrain_fraction']['after']
    assert 0 < frac <= 1 / rec['run']['shards'] + 1e-9
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims == {'sisa_widens_gap': True, 'fairsisa_narrows_gap': True,
                      'joint_is_best': True, 'deletion_is_exact': True}
    sweep = {(r['predictor'], r['shards']): r for r in rec['sweep']}
    assert sweep['MV', 8]['equalized_odds_difference'] > \
        sweep['MV', 1]['equalized_odds_difference'] + 0.05
    assert rec['run']['best'] == 'joint'


def test_7b_profile_refuses_without_a_gpu():
    from workbench.experiments import fairsisa as toxicity
    from workbench.core.profiles import get_profile
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    with pytest.raises(WorkbenchError, match='GPU'):
        toxicity.setup(get_profile('7b'))
    with pytest.raises(WorkbenchError, match='unknown group'):
        toxicity.setup(get_profile('smoke'), progress=False).groups('pets')
