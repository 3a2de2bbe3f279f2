"""Notebook 03 headless on the smoke profile: the paper's effects must show
in its record."""
import pytest


@pytest.mark.notebooks
def test_gradient_ascent_reaches_the_thresholds(smoke_record):
    rec = smoke_record('03_knowledge_unlearning')
    m, thr = rec['metrics'], rec['thresholds']
    # the implanted model knew the forget set far beyond unseen text
    assert m['forget/MA']['before'] > thr['MA'] + 0.2
    assert m['forget/EL_10']['before'] > 5 * thr['EL_10']
    # full-batch gradient ascent brought both below the thresholds ...
    assert m['forget/MA']['after'] <= thr['MA']
    assert m['forget/EL_10']['after'] <= thr['EL_10']
    # ... within the step budget, while the retain set kept a stated share
    # of its memorisation (gradient ascent is not free: see the notebook)
    assert rec['run']['status'] == 'stopped'
    assert m['retain/MA']['after'] > 0.5 * m['retain/MA']['before']
    assert m['world_facts/accuracy']['after'] > \
        0.6 * m['world_facts/accuracy']['before']
    # membership inference: forget texts looked like members before
    assert m['forget/mia_auc_loss']['before'] > 0.9
    assert m['forget/mia_auc_loss']['after'] < \
        m['forget/mia_auc_loss']['before']
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims['ga_reaches_threshold'] is True
    assert 'sequential_beats_batch' in claims
    assert rec['sequential']['forget/MA'] <= thr['MA']
    sizes = {r['forget-set size']: r['steps'] for r in rec['by_size']}
    n = max(sizes)  # the whole forget set
    # size 1, the sequential run's first chunk (half the set), and the set
    assert sorted(sizes) == [1, n // 2, n]
    assert sizes[n // 2] == rec['chunks'][0]['steps']
