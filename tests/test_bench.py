"""bench/gpu_7b.py: every method's step runs (on a tiny model, on CPU),
and the script refuses without a GPU."""
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from workbench import models

from conftest import tiny_llama

SCRIPT = Path(__file__).parent.parent / 'bench' / 'gpu_7b.py'


@pytest.fixture(scope='module')
def gpu_7b():
    spec = importlib.util.spec_from_file_location('gpu_7b', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.DEVICE = 'cpu'
    return module


@pytest.mark.parametrize('method', ['kl', 'ga', 'seul', 'graddiff', 'npo',
                                    'loo', 'kga', 'llmu', 'whp'])
def test_every_method_steps_with_the_benchmark_shapes(gpu_7b, method):
    model = models.add_lora(tiny_llama(), 4)
    args = SimpleNamespace(batch=2, tokens=12)
    run, trained, frozen = gpu_7b.method_runner(method, model, args)
    result = run(2)
    assert result.status == 'completed' and result.steps == 2
    assert trained >= 24 and frozen >= 0
    assert set(gpu_7b.METHODS) >= {method}


def test_refuses_without_a_gpu():
    import torch
    if torch.cuda.is_available():
        pytest.skip('a GPU is visible')
    out = subprocess.run([sys.executable, str(SCRIPT), '--method', 'all'],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().startswith('error: ') \
        and len(out.stderr.strip().splitlines()) == 1
