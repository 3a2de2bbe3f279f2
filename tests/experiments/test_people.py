"""The tour notebook, headless on the smoke profile: the effects it teaches
must show in its record."""
import json

import pytest

from workbench.cli import run_notebook


@pytest.mark.notebooks
def test_tour_forgets_and_shows_the_damage(tmp_path):
    path = run_notebook('00_tour', 'smoke', tmp_path, progress=False)
    rec = json.loads(path.read_text())
    m = rec['metrics']
    assert rec['profile'] == 'smoke' and rec['notebook'] == '00_tour'
    # the implanted model really knew the forget set
    assert m['forget/MA']['before'] > rec['thresholds']['MA'] + 0.2
    assert m['forget/EL_10']['before'] > 5 * rec['thresholds']['EL_10']
    # gradient ascent removed much of it
    assert m['forget/MA']['after'] < m['forget/MA']['before'] - 0.2
    assert m['forget/EL_10']['after'] < 0.5 * m['forget/EL_10']['before']
    # and damaged the retain set on the way
    assert m['retain/perplexity']['after'] > \
        1.5 * m['retain/perplexity']['before']
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims == {'ma_falls': True, 'el_falls': True,
                      'forget_falls_more_than_retain': True,
                      'collateral_damage': True}
    assert (tmp_path / '00_tour.html').stat().st_size > 10_000
    assert rec['elapsed_s'] > 0
