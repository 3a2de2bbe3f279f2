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
