"""colab/install.py: Colab's torch kept, the restart said when a loaded
package was upgraded; and the notebooks' first cell stops on a failed
clone instead of failing later on an import."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / 'colab' / 'install.py'


@pytest.fixture
def colab():
    spec = importlib.util.spec_from_file_location('colab_install', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_install_keeps_the_sessions_torch(colab, tmp_path):
    calls = []
    stale = colab.install(tmp_path, run_pip=lambda *a: calls.append(a))
    constraint = (tmp_path / '.colab-constraints.txt').read_text()
    assert constraint == f'torch=={colab.installed("torch")}\n'
    assert calls[0] == ('-c', str(tmp_path / '.colab-constraints.txt'),
                        '-e', str(tmp_path))
    assert calls[1][0] == '--no-deps'
    assert stale == []  # nothing changed


def test_a_package_upgraded_while_loaded_asks_for_a_restart(colab,
                                                            monkeypatch):
    before = {dist: colab.installed(dist) for dist in colab.WATCHED}
    before['ipywidgets'] = '7.7.1'  # Colab's, imported by the session
    before['plotly'] = '5.0.0'  # upgraded too, but never imported
    modules = {'ipywidgets': object()}
    assert colab.upgraded_while_loaded(before, modules) == ['ipywidgets']


def test_a_failed_pip_is_one_clear_error(colab, monkeypatch):
    class Done:
        returncode = 1
    monkeypatch.setattr(colab.subprocess, 'run', lambda *a, **k: Done())
    with pytest.raises(RuntimeError, match='run this cell again'):
        colab.pip('-e', '/content/workbench')


@pytest.mark.parametrize('path', sorted((ROOT / 'notebooks').glob('*.ipynb')),
                         ids=lambda p: p.stem)
def test_every_notebook_checks_its_clone_and_runs_the_install(path):
    cells = json.loads(path.read_text())['cells']
    first = next(''.join(c['source']) for c in cells
                 if c['cell_type'] == 'code')
    assert "'google.colab' in sys.modules" in first
    assert 'cloned.returncode' in first and 'raise RuntimeError' in first
    assert '%run /content/workbench/colab/install.py' in first
    assert '%pip' not in first  # the script installs, torch kept
