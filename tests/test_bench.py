"""bench/gpu_7b.py: every method's step runs (on a tiny model, on CPU),
and the script refuses without a GPU."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import torch

from workbench import methods
from workbench.core.profiles import get_profile
from workbench.core.roles import Roles

from conftest import tiny_llama

SCRIPT = Path(__file__).parent.parent / 'bench' / 'gpu_7b.py'


@pytest.fixture(scope='module')
def gpu_7b():
    spec = importlib.util.spec_from_file_location('gpu_7b', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DEVICE = 'cpu'
    return module


@pytest.fixture(scope='module')
def tiny_roles(gpu_7b):
    """Roles as the benchmark makes them, on a tiny model."""
    profile = get_profile('7b', lora_r=4)
    return Roles(profile, progress=False, base=tiny_llama(),
                 tokenizer=gpu_7b.word_tokenizer(64))


def test_the_benchmark_runs_every_registered_method(gpu_7b):
    assert gpu_7b.METHODS == ['kl', *methods.REGISTRY]


@pytest.mark.parametrize('method', ['kl', *methods.REGISTRY])
def test_every_method_steps_with_the_benchmark_shapes(gpu_7b, tiny_roles,
                                                      method):
    args = SimpleNamespace(batch=2, tokens=12)
    run, trained, frozen = gpu_7b.method_runner(method, tiny_roles, args)
    before = tiny_roles.state('unlearned')
    result = run(2)
    assert result.status == 'completed' and result.steps == 2
    assert trained >= 24 and frozen >= 0
    after = tiny_roles.state('unlearned')
    assert any(not torch.equal(before[k], after[k]) for k in before), \
        'the method trained the role'


def test_the_word_tokenizer_is_one_token_a_word(gpu_7b):
    tok = gpu_7b.word_tokenizer(64)
    assert tok('w5 w63 hello')['input_ids'] == [5, 63, 1]
    assert tok.pad_token_id == 0


def test_a_failing_method_is_reported_and_the_others_still_run(
        gpu_7b, tmp_path):
    def measure_one(method):
        if method == 'kga':
            raise RuntimeError('CUDA out of memory. Tried to allocate 2 GiB\n'
                               'more detail')
        return {'method': method, 'peak_gpu_gb': 15.0}

    out = tmp_path / 'gpu_7b.json'
    reports = gpu_7b.run_methods(['ga', 'kga', 'whp'], measure_one, out)
    assert [r['method'] for r in reports] == ['ga', 'kga', 'whp']
    assert reports[1] == {'method': 'kga', 'failed': 'RuntimeError: CUDA '
                          'out of memory. Tried to allocate 2 GiB'}
    assert json.loads(out.read_text()) == reports


def test_refuses_without_a_gpu():
    import torch
    if torch.cuda.is_available():
        pytest.skip('a GPU is visible')
    out = subprocess.run([sys.executable, str(SCRIPT), '--method', 'all'],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith('error: ') \
        and len(out.stderr.strip().splitlines()) == 1


@pytest.fixture(scope='module')
def bench_run():
    spec = importlib.util.spec_from_file_location(
        'bench_run', SCRIPT.parent / 'run.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_benchmark_keeps_each_run_and_goes_on_after_a_failure(
        bench_run, tmp_path, monkeypatch):
    names = bench_run.notebook_names('03,07_selective_forgetting')
    assert names == ['03_knowledge_unlearning', '07_selective_forgetting']
    with pytest.raises(ValueError, match="no notebook '99'"):
        bench_run.notebook_names('99')
    out = tmp_path / 'results.json'
    seen = []

    def fake_run(name, profile, seeds=None):
        # what was written before this run is on disk already
        if seen:
            assert bench_run.json.loads(out.read_text())['notebooks']
        seen.append((name, profile))
        if name.startswith('03') and profile == 'cpu':
            return {'minutes': 0.5, 'cached_before': [], 'failed': 'boom'}
        return {'minutes': 6.0 if profile == 'cpu' else 1.0,
                'peak_gb': 1.5, 'cached_before': [],
                'claims': {'a': True, 'b': False}}

    monkeypatch.setattr(bench_run, 'run_notebook', fake_run)
    results = {}
    failed = bench_run.notebook_benchmark(results, names, ['smoke', 'cpu'],
                                          out)
    assert failed == ['03_knowledge_unlearning (cpu)'] and len(seen) == 4
    saved = bench_run.json.loads(out.read_text())
    assert saved == results
    assert results['smoke_suite_minutes']['value'] == 2.0
    assert results['smoke_suite_minutes']['complete'] is False
    top = results['notebook_cpu_minutes_max']
    assert top['value'] == 6.0 and top['notebook'] == names[1]
    assert top['over_goal'] == [names[1]]
    assert results['notebook_cpu_peak_gb_max']['over_goal'] == []


def test_notebook_benchmark_passes_the_seeds_on(bench_run, tmp_path,
                                                monkeypatch):
    """With --seeds, each notebook runs through `workbench run --seeds`,
    and each claim counts the seeds it held in."""
    import json
    import subprocess

    def fake_cli(argv, **kwargs):
        assert argv[-2:] == ['--seeds', '0,1,2']
        out = argv[argv.index('--out') + 1]
        # the record of several seeds, beside a seed's own
        (bench_run.Path(out) / '03_knowledge_unlearning.seeds.json'
         ).write_text(json.dumps({'peak_rss_mb': 1000, 'claims': [
                {'id': 'forgotten', 'holds_in': 2, 'seeds': 3}]}))
        return subprocess.CompletedProcess(argv, 0, '', '')
    monkeypatch.setattr(bench_run.subprocess, 'run', fake_cli)
    entry = bench_run.run_notebook('03_knowledge_unlearning', 'smoke',
                                   [0, 1, 2])
    assert entry['claims'] == {'forgotten': {'holds_in': 2, 'seeds': 3}}
