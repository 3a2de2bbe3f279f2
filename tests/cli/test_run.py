"""`python -m workbench run` with several seeds: one run per seed, one
record of them all."""
import json

import pytest

import workbench.cli as cli
from workbench.cli import main


@pytest.fixture
def fake_runs(monkeypatch):
    """Each notebook run writes a record whose numbers follow its seed
    (no kernel is started)."""
    calls = []

    def run_notebook(name, profile, out, parameters=None, progress=True):
        seed = parameters['seed']
        calls.append((name, profile, str(out), parameters))
        out.mkdir(parents=True, exist_ok=True)
        path = out / '00_tour.json'
        path.write_text(json.dumps({
            'notebook': '00_tour', 'profile': profile, 'seed': seed,
            'model': 'm', 'elapsed_s': 1.0, 'peak_rss_mb': 10,
            'metrics': {'forget/MA': {'after': 0.1 * seed}},
            'thresholds': {}, 'claims': [
                {'id': 'forgotten', 'holds': seed != 1, 'evidence': 'e'}]}))
        return path
    monkeypatch.setattr(cli, 'run_notebook', run_notebook)
    return calls


def test_seeds_run_once_each_and_write_one_record(tmp_path, capsys,
                                                  fake_runs):
    assert main(['run', '00_tour', '--seeds', '0,1,2', '-p', 'steps', '3',
                 '--out', str(tmp_path / 'out')]) == 0
    assert [c[3] for c in fake_runs] == [{'steps': 3, 'seed': s}
                                         for s in (0, 1, 2)]
    assert [c[2].split('/')[-1] for c in fake_runs] == [
        'seed-0', 'seed-1', 'seed-2']
    rec = json.loads((tmp_path / 'out' / '00_tour.seeds.json').read_text())
    assert rec['seeds'] == [0, 1, 2]
    assert rec['claims'][0]['holds_in'] == 2
    assert rec['metrics']['forget/MA']['after']['mean'] == pytest.approx(0.1)
    assert 'claim forgotten: holds in 2 of 3 seeds' in capsys.readouterr().out


@pytest.mark.parametrize('argv, message', [
    (['--seeds', '0,x'], 'is not a comma list'),
    (['--seeds', '1,1'], 'distinct'),
    (['--seeds', '-1'], 'at least 0'),
    (['--seeds', '0,1', '-p', 'seed', '3'], 'not both'),
])
def test_bad_seeds_are_one_line(tmp_path, capsys, fake_runs, argv, message):
    assert main(['run', '00_tour', '--out', str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err and message in err
    assert fake_runs == []
