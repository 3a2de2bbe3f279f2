"""Command line: run a notebook headless, or a method on your own data.

    python -m workbench models
    python -m workbench profiles
    python -m workbench run 00_tour --profile smoke --out results/
    python -m workbench run 03 --profile smoke --seeds 0,1,2 --out results/
    python -m workbench unlearn --method ga --forget F.jsonl \\
        [--retain R.jsonl] [--holdout H.jsonl] [--model NAME] [--implant] \\
        --profile cpu --out results/
    python -m workbench unlearn --method loo --forget F.jsonl \\
        --retain R.jsonl    # every line with "partition" (its user)
    python -m workbench unlearn --method kga --forget F.jsonl \\
        --retain R.jsonl --new N.jsonl
    python -m workbench unlearn --method llmu --forget F.jsonl \\
        --retain NORMAL.jsonl [--implant]   # question/answer lines
    python -m workbench unlearn --method whp --forget TEXT.jsonl \\
        --anchors A.jsonl [--prompts P.jsonl] [--implant]

Every error is one line on stderr and a non-zero exit, never a traceback.
"""
import argparse
import json
import math
import os
import sys
from pathlib import Path

from ..core import WorkbenchError, record
from ..core.paths import NOTEBOOK_DIR, results_dir
from ..core.profiles import PROFILES, get_profile, profile_arg
from ..methods import REGISTRY
from ..core.models import list_models
from .inputs import check_out
from .unlearn import unlearn


def find_notebook(name):
    """A notebook path from a name like '00_tour', '00' or a file path."""
    path = Path(name)
    if path.suffix == '.ipynb' and path.is_file():
        return path
    stem = path.stem
    matches = sorted(NOTEBOOK_DIR.glob(f'{stem}*.ipynb'))
    if len(matches) != 1:
        known = ', '.join(p.stem for p in sorted(NOTEBOOK_DIR.glob('*.ipynb')))
        raise WorkbenchError(f'no single notebook matches {name!r}; known: '
                             f'{known}')
    return matches[0]


def run_notebook(name, profile, out, parameters=None, progress=True):
    """Execute a notebook with papermill; write it, its HTML and record."""
    # memory: only `run` loads the notebook stack (papermill, nbconvert)
    import papermill as pm
    from nbconvert import HTMLExporter
    nb = find_notebook(name)
    get_profile(profile)
    check_out(out)
    out = results_dir(out)
    executed = out / nb.name
    params = {'profile': profile, 'results_dir': str(out.resolve()),
              **(parameters or {})}
    previous = os.environ.get('WORKBENCH_HEADLESS')
    os.environ['WORKBENCH_HEADLESS'] = '1'  # the kernel inherits it
    try:
        pm.execute_notebook(str(nb), str(executed), parameters=params,
                            kernel_name='python3', progress_bar=progress,
                            cwd=str(nb.parent))
    except pm.PapermillExecutionError as e:
        raise WorkbenchError(f'{nb.name} failed in cell {e.exec_count}: '
                             f'{e.ename}: {e.evalue} (see {executed})')
    finally:
        if previous is None:
            del os.environ['WORKBENCH_HEADLESS']
        else:
            os.environ['WORKBENCH_HEADLESS'] = previous
    body, _ = HTMLExporter().from_filename(str(executed))
    executed.with_suffix('.html').write_text(body)
    return out / f'{nb.stem}.json'


def run_seeds(name, profile, out, seeds, parameters=None, progress=True):
    """`run_notebook` once per seed, each into `out/seed-<k>/`, then one
    record of them all (`record.merge`) in `out`, as
    `<notebook>.seeds.json` (beside, not over, a record of one run: the
    notebook's own table of seeds reads it); returns its path."""
    check_out(out)
    out = results_dir(out)
    records = []
    for seed in seeds:
        path = run_notebook(name, profile, out / f'seed-{seed}',
                            {**(parameters or {}), 'seed': seed}, progress)
        records.append(json.loads(path.read_text()))
    merged = record.merge(records)
    path = record.seeds_path(out, path.stem)
    path.write_text(json.dumps(merged, indent=1))
    return path


def _number(value, width):
    """One number of a record, or of a record of several seeds (its mean
    and standard deviation), `width` characters wide."""
    if isinstance(value, dict):
        if 'mean' not in value:
            value = None
        else:
            return f"{value['mean']:9.4f} ± {value['std']:.4f}"
    return f'{"-":>{width}s}' if value is None else f'{value:{width}.4f}'


def print_record(path):
    """A short results table from a saved record (of one seed, or of
    several: each number's mean and spread, each claim's share of
    seeds)."""
    rec = json.loads(Path(path).read_text())
    several = isinstance(rec.get('seeds'), list)
    width = 17 if several else 10
    seeds = f"  seeds {', '.join(map(str, rec['seeds']))}" if several else ''
    print(f"\n{rec['notebook']}  profile={rec['profile']}{seeds}  "
          f"{rec['elapsed_s']} s  peak {rec['peak_rss_mb']} MiB")
    print(f"{'metric':28s} {'before':>{width}s} {'after':>{width}s}")
    for k, v in rec['metrics'].items():
        print(f"{k:28s} {_number(v.get('before'), width)} "
              f"{_number(v.get('after'), width)}")
    for k, v in rec.get('thresholds', {}).items():
        print(f'threshold {k:18s} {_number(v, width)}')
    for c in rec.get('claims', []):
        if several:
            print(f"claim {c['id']}: holds in {c['holds_in']} of "
                  f"{c['seeds']} seeds")
        else:
            print(f"claim {c['id']}: "
                  f"{'holds' if c['holds'] else 'does not hold'} "
                  f"({c['evidence']})")


def cmd_models(args):
    for r in list_models():
        print(f"{r['name']:14s} {r['kind']:10s} {r['offline']}  "
              f"(online: {r['hub']})")
    print('any local folder, or any hub id while online, works too')


def cmd_profiles(args):
    for name, p in PROFILES.items():
        print(f'{name:6s} model={p.model} dtype={p.dtype} lora={p.lora} '
              f'forget={p.n_forget} retain={p.n_retain} '
              f'steps={p.unlearn_steps}')


def cmd_run(args):
    params = {}
    for key, value in args.param or []:
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    if args.seeds is None:
        print_record(run_notebook(args.notebook, args.profile, args.out,
                                  params))
        return
    if 'seed' in params:
        raise WorkbenchError('give the seeds with --seeds or one seed with '
                             '-p seed, not both')
    find_notebook(args.notebook)
    get_profile(args.profile)
    print_record(run_seeds(args.notebook, args.profile, args.out,
                           args.seeds, params))


def cmd_unlearn(args):
    path = unlearn(args)
    print_record(path)


class Parser(argparse.ArgumentParser):
    """argparse, with its errors one line like every other error here."""
    def error(self, message):
        print(f'error: {message} (see `{self.prog} --help`)', file=sys.stderr)
        sys.exit(2)


def number(kind, low, high=None, above=False):
    """An argparse type: a finite `kind` from `low` (or `above` it) up to
    `high`."""
    word = 'a number' if kind is float else 'a whole number'
    bounds = (f'above {low}' if above else f'at least {low}') + (
        f' and at most {high}' if high is not None else '')

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'{text!r} is not {word}')
        if (not math.isfinite(value) or value < low or (above and value == low)
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f'must be {bounds}, got {text}')
        return value
    parse.__name__ = kind.__name__
    return parse


def profile_name(text):
    """An argparse type: a profile's name, or a JSON file of one."""
    try:
        return profile_arg(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def seed_list(text):
    """An argparse type: a comma list of distinct whole numbers >= 0."""
    try:
        return record.parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def build_parser():
    parser = Parser(
        prog='python -m workbench',
        description='LLM Unlearning Workbench: notebooks and methods')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('models', help='what each model name resolves to here')
    sub.add_parser('profiles', help='the run profiles')
    run = sub.add_parser('run', help='execute a notebook headless')
    run.add_argument('notebook', help="e.g. 00_tour")
    run.add_argument('--profile', default='smoke', type=profile_name,
                     help=f'{", ".join(PROFILES)}, or a .json file of '
                          f'a profile (see README)')
    run.add_argument('--out', default=None, help='results folder')
    run.add_argument('-p', '--param', nargs=2, action='append',
                     metavar=('NAME', 'VALUE'), help='notebook parameter')
    run.add_argument('--seeds', type=seed_list, default=None,
                     help='run once per seed (0,1,2) and write one record '
                          'of them all: per-seed values, mean and spread, '
                          'and how many seeds each claim held in')
    un = sub.add_parser('unlearn', help='run a method on your JSONL data')
    un.add_argument('--method', required=True, choices=list(REGISTRY),
                    help='; '.join(f'{name}: {m.TITLE}'
                                   for name, m in REGISTRY.items()))
    un.add_argument('--forget', required=True,
                    help='JSONL: {"text": ..., "spans": [[start, end], ...]}'
                         ' (spans for seul; annotated when missing)')
    un.add_argument('--retain', help='JSONL kept and measured')
    un.add_argument('--holdout', help='JSONL never trained on (thresholds); '
                                      'default: the shipped unseen people')
    un.add_argument('--new', help='kga: JSONL of the same kind, never '
                                  'trained on (D_n)')
    un.add_argument('--anchors', help='whp: JSONL of {"term": ..., '
                                      '"generic": ...}')
    un.add_argument('--prompts', help='whp: familiarity prompts, JSONL of '
                                      '{"prompt", "story", "generic"}')
    un.add_argument('--alpha', type=number(float, 0), default=2.0,
                    help='whp: weight of the reinforcement difference')
    un.add_argument('--model', help='model name, folder or hub id')
    un.add_argument('--implant', action='store_true',
                    help='first fine-tune until forget and retain are '
                         'memorised (cached); loo and kga always train '
                         'their models (LoRA adapters, cached)')
    un.add_argument('--implant-lr', type=number(float, 0, above=True),
                    help="implant learning rate (default: the profile's)")
    un.add_argument('--implant-epochs', type=number(int, 1),
                    help="most implant epochs (default: the profile's; "
                         "loo and kga: epochs of every model, 4)")
    un.add_argument('--profile', default='cpu', type=profile_name,
                    help=f'{", ".join(PROFILES)}, or a .json file of a '
                         f'profile')
    un.add_argument('--steps', type=number(int, 1),
                    help='unlearning steps')
    un.add_argument('--lr', type=number(float, 0, above=True),
                    help="learning rate (default: the profile's)")
    un.add_argument('--batch-size', type=number(int, 0), default=0,
                    help='sequences per step; 0: the whole forget set')
    un.add_argument('--spans', default='online',
                    choices=['online', 'annotated'],
                    help='seul: train on online-selected or on the '
                         'annotated spans')
    un.add_argument('--selector', default='original',
                    choices=['original', 'current'],
                    help='seul online: which model selects the spans')
    un.add_argument('--quantile', type=number(float, 0, 1, above=True),
                    default=0.3,
                    help='seul online: least likely share selected')
    un.add_argument('--span-n', type=number(int, 1), default=2,
                    help='seul: n of S-EL_n')
    un.add_argument('--annotator', default='smollm2-135m',
                    help="seul: instruct model annotating lines without "
                         "spans, or 'rules'")
    un.add_argument('--ppl-bound', type=number(float, 1, above=True),
                    default=10.0,
                    help='stop and restore if retain perplexity grows by '
                         'this factor')
    un.add_argument('--save-model', action='store_true',
                    help='also save the unlearned model under --out')
    un.add_argument('--out', default=None, help='results folder')
    un.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


COMMANDS = {'models': cmd_models, 'profiles': cmd_profiles, 'run': cmd_run,
            'unlearn': cmd_unlearn}


def main(argv=None):
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad option (its one line shown)
        return e.code
    try:
        COMMANDS[args.command](args)
    except WorkbenchError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        return 130
    return 0
