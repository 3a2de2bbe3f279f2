"""The GPU path, proved in one go (on one H100: under 10 minutes).

    python bench/gpu_check.py --out gpu_check             # on a GPU
    python bench/gpu_check.py --device cpu --out check    # the same steps,
                                                          # tiny models

Three steps, each reported (and written to `--out`/gpu_check.json) as it
ends; a step that fails is reported with its error and the others still
run; the exit status is 1 when one failed:

1. `device`: the device suite (`pytest -m device`): every registered
   method's update and the notebooks' measurements on a tiny model, on
   every device present, in float32 and bfloat16, with SmolLM2's
   tokenizer and a BOS-adding one.
2. `methods`: every registered method at Mistral-7B's architecture,
   randomly initialised (nothing is downloaded), bf16, LoRA r=16 on every
   linear layer, gradient checkpointing, through `bench/gpu_7b.py`'s
   runner: peak GPU memory, trained tokens/s and MFU. With `--device cpu`
   the architecture shrinks to two small layers.
3. `notebooks`: every notebook executed headless (`python -m workbench
   run`) on the device with a randomly initialised model of SmolLM2-135M's
   architecture and of MiniLM's, under a profile file: the smoke sizes,
   the device, the precision the card computes natively. It proves that
   every path runs and writes its record, not that a claim holds (a random
   model learns little in the smoke budget). With `--device cpu` both
   models shrink to two small layers.

The random models take the offline tokenizers: the bundled ones where
they are installed, else `--tokenizers DIR` (written here by `--prepare
DIR`, a few MB, to carry to a machine without them). What a step needs
beyond torch, transformers, peft and accelerate (pytest for the device
suite; papermill, ipykernel, datasets, plotly, ipywidgets, anywidget,
scipy, scikit-learn, fairlearn, pandas, rouge-score for the notebooks) is
checked first: a step whose packages are missing fails at once with
their names; `--wheels DIR` installs them from wheels carried there.

A GPU machine that cannot download gets those wheels carried to it.
`--fetch-wheels DIR`, run where PyPI is reachable, downloads them with
their dependencies for the GPU machine's Python (`--python-version`,
3.12 by default; Linux x86-64), leaves out the distributions a CUDA
PyTorch image already holds (`PRESENT`, or `--present FILE`: that
machine's `pip list --format=freeze`), and fails if what is left is
over `--limit-mib` (64):

    python bench/gpu_check.py --fetch-wheels wheels     # here
    python bench/gpu_check.py --wheels wheels --out gpu_check   # there
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
# the workbench from this checkout, installed or not (a GPU machine runs it
# from a copy of the repository), here and in every child process
sys.path[:0] = [str(ROOT), str(ROOT / 'bench')]
os.environ['PYTHONPATH'] = os.pathsep.join(
    [str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])])

NEEDS = {
    'device': ['pytest', 'datasets', 'scipy', 'sklearn', 'rouge_score'],
    'methods': ['scipy'],
    'notebooks': ['papermill', 'ipykernel', 'datasets', 'plotly',
                  'ipywidgets', 'anywidget', 'scipy', 'sklearn', 'fairlearn',
                  'pandas', 'rouge_score', 'nbconvert'],
}
STEPS = list(NEEDS)


def missing(step):
    return [m for m in NEEDS[step] if importlib.util.find_spec(m) is None]


def one_line(error):
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else ""}'


# 1. the device suite


def device_step(args):
    t = time.perf_counter()
    env = dict(os.environ)
    if args.tokenizers:  # SmolLM2's offline copy may not be installed
        env['WORKBENCH_SMOLLM2_TOKENIZER'] = str(
            tokenizer_sources(args.tokenizers)[0])
    proc = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         '-m', 'device', *(['-k', args.select] if args.select else []),
         str(ROOT / 'tests' / 'device')],
        capture_output=True, text=True, cwd=ROOT, env=env)
    lines = proc.stdout.strip().splitlines()
    report = {'seconds': time.perf_counter() - t,
              'summary': lines[-1] if lines else proc.stderr[-300:]}
    if proc.returncode:
        report['failed'] = report['summary']
        report['output_tail'] = proc.stdout[-3000:]
    return report


# 2. every method at the 7B architecture


def tiny_mistral():
    """Mistral's architecture, two small layers (the CPU stand-in)."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=512, hidden_size=64,
                           intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2,
                           max_position_embeddings=512)
    model = MistralForCausalLM(config).to(torch.bfloat16)
    model.config.use_cache = False
    return model


def methods_step(args):
    import torch
    import gpu_7b
    from workbench.core.profiles import get_profile
    from workbench.core.roles import Roles
    gpu_7b.DEVICE = args.device
    sizes = SimpleNamespace(batch=args.batch, tokens=args.tokens,
                            steps=args.steps)
    profile = get_profile('7b')
    if args.device == 'cuda':
        roles = gpu_7b.build(profile)
    else:
        sizes = SimpleNamespace(batch=2, tokens=32, steps=2)
        base = tiny_mistral()
        roles = Roles(profile, progress=False, base=base,
                      tokenizer=gpu_7b.word_tokenizer(base.config.vocab_size))
    n_params = sum(p.numel() for p in roles.base.parameters())
    roles.add('original')
    n_train = sum(p.numel() for p in roles.state('original').values())

    def measure_one(method):
        try:
            if args.device == 'cuda':
                return gpu_7b.measure(method, roles, sizes, n_params, n_train)
            run, trained, _ = gpu_7b.method_runner(method, roles, sizes)
            t = time.perf_counter()
            result = run(sizes.steps)
            seconds = time.perf_counter() - t
            if result.steps < 1:
                raise RuntimeError(f'{method} took no step: '
                                   f'{result.status}, {result.message}')
            return {'method': method, 'status': result.status,
                    'steps': result.steps, 'params': n_params,
                    'trained_tokens_per_s': trained * result.steps / seconds}
        finally:
            roles.model.zero_grad(set_to_none=True)
            if args.device == 'cuda':
                torch.cuda.empty_cache()
    reports = gpu_7b.run_methods(gpu_7b.METHODS, measure_one)
    failed = [r['method'] for r in reports if 'failed' in r]
    out = {'architecture': type(roles.base).__name__, 'params': n_params,
           'trainable': n_train, 'reports': reports}
    if failed:
        out['failed'] = f'{", ".join(failed)} failed'
    del roles
    return out


# 3. every notebook on the device, random models


def random_models(folder, device, tokenizers=None):
    """A random model of SmolLM2-135M's architecture and one of MiniLM's
    (two small layers each on a CPU), saved with the offline tokenizers;
    returns their folders."""
    import torch
    from transformers import (AutoTokenizer, BertConfig, BertModel,
                              LlamaConfig, LlamaForCausalLM)
    smol_tok, mini_tok = tokenizer_sources(tokenizers)
    tok = AutoTokenizer.from_pretrained(smol_tok)
    torch.manual_seed(0)
    if device == 'cuda':  # SmolLM2-135M's own sizes
        dims = dict(hidden_size=576, intermediate_size=1536,
                    num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3)
    else:
        dims = dict(hidden_size=64, intermediate_size=128,
                    num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2)
    lm = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), max_position_embeddings=2048,
        tie_word_embeddings=True, rope_theta=100000.0,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, **dims))
    lm.save_pretrained(folder / 'smollm2-random')
    tok.save_pretrained(folder / 'smollm2-random')
    etok = AutoTokenizer.from_pretrained(mini_tok)
    edims = (dict(hidden_size=384, intermediate_size=1536,
                  num_hidden_layers=6, num_attention_heads=12)
             if device == 'cuda' else
             dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4))
    enc = BertModel(BertConfig(vocab_size=len(etok), **edims))
    enc.save_pretrained(folder / 'minilm-random')
    etok.save_pretrained(folder / 'minilm-random')
    return folder / 'smollm2-random', folder / 'minilm-random'


def tokenizer_sources(tokenizers=None):
    """The folders of SmolLM2's and MiniLM's tokenizers."""
    if tokenizers:
        return Path(tokenizers) / 'smollm2', Path(tokenizers) / 'minilm'
    from workbench import WorkbenchError
    from workbench.core.models import resolve
    try:
        return resolve('smollm2-135m').path, resolve('minilm').path
    except WorkbenchError as e:
        raise RuntimeError(f'{e}; or pass --tokenizers DIR, written by '
                           f'--prepare DIR where they are installed')


def notebooks_step(args):
    from run import notebook_names
    out = Path(args.out) / 'notebooks'
    out.mkdir(parents=True, exist_ok=True)
    lm, encoder = random_models(out, args.device, args.tokenizers)
    profile = out / 'profile.json'
    profile.write_text(json.dumps({
        'base': 'smoke', 'model': str(lm), 'encoder': str(encoder),
        'device': args.device, 'dtype': 'auto'}, indent=1))
    runs, failed = {}, []
    for name in notebook_names(args.notebooks):
        params = ['-p', 'annotator', str(lm)] if name.startswith('07') \
            else []
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, '-m', 'workbench', 'run', name, '--profile',
             str(profile), '--out', str(out), *params],
            capture_output=True, text=True, cwd=ROOT)
        entry = {'minutes': (time.perf_counter() - t) / 60}
        record = out / f'{name}.json'
        if proc.returncode or not record.exists():
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            entry['failed'] = lines[-1] if lines else \
                f'exit status {proc.returncode}'
            failed.append(name)
        else:
            rec = json.loads(record.read_text())
            entry['claims'] = {c['id']: c['holds'] for c in rec['claims']}
            entry['device'], entry['dtype'] = rec['device'], rec['dtype']
        runs[name] = entry
        print(f'  {name}: {entry["minutes"]:.1f} min'
              + (f', FAILED: {entry["failed"]}' if 'failed' in entry
                 else ''), flush=True)
    report = {'profile': json.loads(profile.read_text()), 'runs': runs}
    if failed:
        report['failed'] = f'{", ".join(failed)} failed'
    return report


def prepare(folder):
    """Write the offline tokenizers into `folder`, to carry to a machine
    without the bundled models."""
    from transformers import AutoTokenizer
    smol, mini = tokenizer_sources()
    folder = Path(folder)
    AutoTokenizer.from_pretrained(smol).save_pretrained(folder / 'smollm2')
    AutoTokenizer.from_pretrained(mini).save_pretrained(folder / 'minilm')
    size = sum(f.stat().st_size for f in folder.rglob('*') if f.is_file())
    print(f'tokenizers in {folder} ({size / 2**20:.1f} MiB)')


# distribution names of the modules in NEEDS
DISTRIBUTIONS = {'sklearn': 'scikit-learn', 'rouge_score': 'rouge-score'}

# what a CUDA PyTorch image holds beside torch, transformers, peft and
# accelerate, of the distributions the steps need (the H100 and H200 images
# the check is written for hold them all): not carried
PRESENT = (
    'absl-py anyio attrs certifi charset-normalizer click cloudpickle '
    'filelock fsspec h11 hf-xet huggingface-hub idna jinja2 joblib '
    'markupsafe narwhals numpy packaging pandas psutil pyarrow pygments '
    'pytest pluggy iniconfig python-dateutil pyyaml regex requests '
    'safetensors scikit-learn scipy six threadpoolctl tokenizers tqdm '
    'typing-extensions urllib3 xxhash aiohttp aiosignal aiohappyeyeballs '
    'frozenlist multidict propcache yarl torch transformers peft '
    'accelerate').split()

# manylinux tags pip matches for a Linux x86-64 machine
PLATFORMS = ('manylinux_2_28_x86_64', 'manylinux_2_27_x86_64',
             'manylinux_2_17_x86_64', 'manylinux2014_x86_64',
             'manylinux1_x86_64')


def canonical(name):
    """A distribution's name as pip compares them."""
    return re.sub(r'[-_.]+', '-', name).lower()


def present_names(path=None):
    """Canonical names of the distributions the GPU machine holds: a
    `pip list --format=freeze` (or one name a line) at `path`, else
    PRESENT."""
    if path is None:
        return {canonical(n) for n in PRESENT}
    lines = Path(path).read_text().splitlines()
    return {canonical(re.split(r'[=<>@ ]', ln.strip(), maxsplit=1)[0])
            for ln in lines if ln.strip() and not ln.startswith('#')}


def fetch_wheels(folder, python='3.12', present=None, limit_mib=64.0):
    """Download into `folder` the wheels of what the three steps need,
    with their dependencies, for CPython `python` on Linux x86-64; delete
    those of the distributions `present` names (canonical names); return
    the kept files. Raises when they are over `limit_mib` MiB."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    wanted = sorted({DISTRIBUTIONS.get(m, m) for need in NEEDS.values()
                     for m in need} - set(present))
    platforms = [a for p in PLATFORMS for a in ('--platform', p)]
    subprocess.run([sys.executable, '-m', 'pip', 'download', '-q',
                    '--only-binary=:all:', '--python-version', python,
                    '--implementation', 'cp', *platforms, '--platform',
                    'any', '-d', str(folder), *wanted], check=True)
    kept = []
    for f in sorted(folder.glob('*.whl')):
        if canonical(f.name.split('-')[0]) in present:
            f.unlink()
        else:
            kept.append(f)
    mib = sum(f.stat().st_size for f in kept) / 2 ** 20
    print(f'{len(kept)} wheels in {folder}: {mib:.1f} MiB')
    if mib > limit_mib:
        raise RuntimeError(f'the wheels take {mib:.1f} MiB, over '
                           f'{limit_mib:g} MiB: list what the machine '
                           f'holds in --present FILE')
    return kept


def install_wheels(folder, steps):
    """pip install every wheel in `folder` (no index, no dependency
    resolution: `fetch_wheels` resolved them) when the steps need
    something this machine lacks."""
    if not any(missing(s) for s in steps):
        return
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q',
                    '--no-index', '--no-deps',
                    *map(str, sorted(Path(folder).glob('*.whl')))],
                   check=True)


STEP_RUNNERS = {'device': device_step, 'methods': methods_step,
                'notebooks': notebooks_step}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', default='cuda', choices=['cuda', 'cpu'])
    parser.add_argument('--out', default='gpu_check')
    parser.add_argument('--steps', default=','.join(STEPS),
                        help='which of device,methods,notebooks')
    parser.add_argument('--notebooks', default='',
                        help='numbers or names, comma-separated (all: empty)')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--tokens', type=int, default=256)
    parser.add_argument('--train-steps', dest='steps_n', type=int,
                        default=3)
    parser.add_argument('--select', default='',
                        help="the device suite's tests to run (pytest -k; "
                             "all: empty)")
    parser.add_argument('--tokenizers', default=None)
    parser.add_argument('--wheels', default=None)
    parser.add_argument('--prepare', default=None, metavar='DIR')
    parser.add_argument('--fetch-wheels', dest='fetch', default=None,
                        metavar='DIR', help='download the wheels a GPU '
                        'machine without them needs, and stop')
    parser.add_argument('--python-version', dest='python', default='3.12')
    parser.add_argument('--present', default=None, metavar='FILE')
    parser.add_argument('--limit-mib', dest='limit_mib', type=float,
                        default=64.0)
    args = parser.parse_args(argv)
    if args.prepare or args.fetch:  # here, for a machine without them
        if args.prepare:
            prepare(args.prepare)
        if args.fetch:
            try:
                fetch_wheels(args.fetch, args.python,
                             present_names(args.present), args.limit_mib)
            except (RuntimeError, OSError,
                    subprocess.CalledProcessError) as e:
                print(f'error: {one_line(e)}', file=sys.stderr)
                return 2
        return 0
    args.steps, steps = args.steps_n, [s.strip() for s in
                                      args.steps.split(',') if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f'unknown step(s) {sorted(unknown)}; the steps are '
                     f'{", ".join(STEPS)}')
    import torch
    if args.device == 'cuda' and not torch.cuda.is_available():
        print('error: no CUDA GPU is visible here; --device cpu runs the '
              'same steps with tiny models', file=sys.stderr)
        return 2
    if args.wheels:
        install_wheels(args.wheels, steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {'device': (torch.cuda.get_device_name()
                          if args.device == 'cuda' else 'cpu'),
               'torch': torch.__version__}
    for step in steps:
        print(f'{step}...', flush=True)
        t = time.perf_counter()
        lacking = missing(step)
        if lacking:
            report = {'failed': f'missing packages: {", ".join(lacking)} '
                                f'(carry their wheels; --wheels DIR)'}
        else:
            try:
                report = STEP_RUNNERS[step](args)
            except Exception as e:  # reported; the other steps still run
                report = {'failed': one_line(e),
                          'traceback': traceback.format_exc()[-3000:]}
        report['step_minutes'] = (time.perf_counter() - t) / 60
        results[step] = report
        (out / 'gpu_check.json').write_text(json.dumps(results, indent=1))
        print(f'{step}: ' + (f'FAILED: {report["failed"]}'
                             if 'failed' in report else 'ok')
              + f' ({report["step_minutes"]:.1f} min)', flush=True)
    failed = [s for s in steps if 'failed' in results[s]]
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
