"""Notebook 02 (the leave-one-out ensemble) headless on the smoke profile: the
paper's effects must show in its record."""
import pytest


@pytest.mark.notebooks
def test_leave_one_out_forgets_like_the_oracle(smoke_record):
    rec = smoke_record('02_loo_ensemble')
    m, methods = rec['metrics'], rec['methods']
    oracle = methods['oracle (retrained)']
    # the student had memorised the canaries: far above the oracle, and
    # at least one could be extracted from its prefix
    assert m['forget/exposure']['before'] > oracle['forget/exposure'] + 5
    assert m['forget/extracted']['before'] > 0
    # leave-one-out: exposure at least 3/4 of the way down to the oracle's,
    # nothing extracted
    e = m['forget/exposure']
    assert e['before'] - e['after'] >= \
        0.75 * (e['before'] - oracle['forget/exposure'])
    assert m['forget/extracted']['after'] == 0
    # the full ensemble leaks; gradient ascent wrecks the retained text
    assert methods['full ensemble']['forget/exposure'] >= \
        m['forget/exposure']['after'] + 2
    assert methods['gradient ascent']['retain/perplexity'] > \
        2 * m['retain/perplexity']['after']
    # leave-one-out keeps utility within a stated factor
    assert m['retain/perplexity']['after'] < \
        2 * m['retain/perplexity']['before']
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims == {'loo_near_oracle': True, 'full_ensemble_leaks': True,
                      'loo_keeps_utility_better_than_ga': True}
    # the retrained excluded teacher no longer exposes its canary
    fate = rec['teacher_fate']
    assert fate['exposure after'] < fate['exposure before'] - 3
