"""FairSISA's post-processing: the equalized-odds LPs on predictions whose
optimum is known, against fairlearn and by hand."""
import itertools

import numpy as np
import pytest

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
