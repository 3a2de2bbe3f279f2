"""bench/gpu_check.py runs its three steps to the end on a CPU with tiny
models, and refuses `--device cuda` without a GPU in one line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent.parent / 'bench' / 'gpu_check.py'


@pytest.mark.notebooks
def test_the_gpu_check_runs_every_step_on_a_cpu(tmp_path, cache,
                                                 smol_tokenizer):
    """All three steps, with a part of the device suite and one notebook
    (a test of the script, not of what the steps check)."""
    from workbench.core.models import resolve
    from transformers import AutoTokenizer
    tokenizers = tmp_path / 'tokenizers'  # as --prepare writes them
    smol_tokenizer.save_pretrained(tokenizers / 'smollm2')
    AutoTokenizer.from_pretrained(resolve('minilm').path).save_pretrained(
        tokenizers / 'minilm')
    out = tmp_path / 'check'
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), '--device', 'cpu', '--out', str(out),
         '--select', 'cpu-bfloat16-bos and (ga or answers)',
         '--notebooks', '00', '--tokenizers', str(tokenizers)],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / 'gpu_check.json').read_text())
    assert 'passed' in results['device']['summary']
    reports = results['methods']['reports']
    assert [r['method'] for r in reports][1:] == [
        'ga', 'seul', 'graddiff', 'npo', 'simnpo', 'rmu', 'loo', 'kga',
        'llmu', 'whp']
    assert all(r['status'] == 'completed' and r['trained_tokens_per_s'] > 0
               for r in reports)
    runs = results['notebooks']['runs']
    assert list(runs) == ['00_tour']
    for name, run in runs.items():
        assert run['device'] == 'cpu' and run['dtype'] == 'float32'
        assert (out / 'notebooks' / f'{name}.json').exists()


def test_without_a_gpu_cuda_is_refused_in_one_line():
    if torch.cuda.is_available():
        pytest.skip('a GPU is visible')
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ')


def load_script():
    import importlib.util
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fetched_wheels_leave_out_what_the_machine_holds(tmp_path,
                                                         monkeypatch):
    """`--fetch-wheels` keeps only the wheels of distributions the GPU
    machine lacks, and refuses a set over the carry limit (pip's download
    is replaced by one that writes named files of given sizes)."""
    check = load_script()
    sizes = {'papermill-2.7.0-py3-none-any.whl': 1000,
             'pandas-3.0.0-cp312-cp312-manylinux_2_28_x86_64.whl': 9000,
             'Scikit_Learn-1.8-cp312-cp312-manylinux_2_28_x86_64.whl': 9000,
             'rouge_score-0.0.4-py2.py3-none-any.whl': 500}
    asked = []

    def download(cmd, check):
        asked.append(cmd)
        folder = Path(cmd[cmd.index('-d') + 1])
        for name, size in sizes.items():
            (folder / name).write_bytes(b'0' * size)
    monkeypatch.setattr(check.subprocess, 'run', download)
    present = check.present_names()
    kept = check.fetch_wheels(tmp_path / 'w', present=present)
    assert sorted(f.name for f in kept) == [
        'papermill-2.7.0-py3-none-any.whl',
        'rouge_score-0.0.4-py2.py3-none-any.whl']
    assert sorted(f.name for f in (tmp_path / 'w').iterdir()) == sorted(
        f.name for f in kept)
    cmd = asked[0]
    assert cmd[cmd.index('--python-version') + 1] == '3.12'
    assert 'papermill' in cmd and 'rouge-score' in cmd
    assert 'pandas' not in cmd and 'scikit-learn' not in cmd
    freeze = tmp_path / 'freeze.txt'
    freeze.write_text('papermill==2.7.0\nRouge_Score @ file:///x\n')
    assert check.present_names(freeze) == {'papermill', 'rouge-score'}
    with pytest.raises(RuntimeError, match='over 0.01 MiB'):
        check.fetch_wheels(tmp_path / 'v', present={'pandas'},
                           limit_mib=0.01)
