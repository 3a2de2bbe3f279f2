"""Notebook 07 headless on the smoke profile: SeUL forgets the spans and
keeps more than full-sequence gradient ascent."""
import pytest


@pytest.mark.notebooks
def test_seul_forgets_spans_and_keeps_utility(smoke_record):
    rec = smoke_record('07_selective_forgetting')
    m, thr = rec['metrics'], rec['thresholds']
    # the annotation is precise, and finds most true details
    assert rec['annotation']['precision']['forget'] > 0.95
    assert rec['annotation']['recall']['forget'] > 0.7
    # the spans were memorised, then forgotten to the unseen level
    assert m['forget/S-MA']['before'] > thr['S-MA'] + 0.2
    assert m['forget/S-MA']['after'] <= thr['S-MA']
    assert m['forget/S-EL_2']['after'] <= thr['S-EL_2']
    # the template words went less than under full-sequence ascent
    ga = rec['ga_after']
    assert m['forget/MA']['after'] > ga['forget/MA']
    assert m['retain/MA']['after'] > ga['retain/MA']
    # and general knowledge kept a stated share
    assert m['world_facts/accuracy']['after'] > \
        0.8 * m['world_facts/accuracy']['before']
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims == {'spans_forgotten': True,
                      'seul_keeps_more_utility_than_ga': True}
