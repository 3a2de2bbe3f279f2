"""Notebook 01 (FairSISA) headless on the smoke profile, and its set-up's
refusals."""
import pytest
import torch

from workbench import WorkbenchError


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
