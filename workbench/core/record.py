"""The results record: one JSON per notebook or CLI run.

    {"notebook": ..., "profile": ..., "seed": ..., "model": ...,
     "device": ..., "dtype": ..., "elapsed_s": ..., "peak_rss_mb": ...,
     "metrics": {"forget/EL_10": {"before": ..., "after": ...}, ...},
     "thresholds": {"EL_10": ..., "MA": ...},
     "claims": [{"id": ..., "holds": ..., "evidence": ...}]}

Claims are computed from the metrics by the code that records them, never
written by hand. A notebook run once per seed gives one record of them all
(`merge`): each number's per-seed values, mean and spread, and how many
seeds each claim held in.
"""
import json
import resource
import statistics
import time

import psutil
from pathlib import Path

from .paths import results_dir


def peak_rss_mb():
    """Peak resident memory of this process so far, in MiB (the record's
    `peak_rss_mb`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Record:
    """Collects one run's metrics, thresholds and claims."""

    def __init__(self, notebook, profile, seed, model):
        """`profile`: the run's `Profile` (its name, device and the dtype
        it ran in are recorded), or just its name."""
        run_on = {}
        if hasattr(profile, 'precision'):
            run_on = {'device': profile.device, 'dtype': profile.precision}
            profile = profile.name
        self.data = {'notebook': notebook, 'profile': profile, 'seed': seed,
                     'model': model, **run_on, 'elapsed_s': None,
                     'peak_rss_mb': None, 'metrics': {}, 'thresholds': {},
                     'claims': []}
        # elapsed time counts from the start of the process (the kernel)
        self._start = psutil.Process().create_time()

    def before(self, key, value):
        """Record the value of `key` before the method ran."""
        self.data['metrics'].setdefault(key, {})['before'] = float(value)

    def after(self, key, value):
        """Record the value of `key` after the method ran."""
        self.data['metrics'].setdefault(key, {})['after'] = float(value)

    def threshold(self, key, value):
        self.data['thresholds'][key] = float(value)

    def claim(self, claim_id, holds, evidence):
        """A paper's finding, and whether this run reproduces it."""
        self.data['claims'].append({'id': claim_id, 'holds': bool(holds),
                                    'evidence': evidence})

    def table(self):
        """The metrics as a pandas DataFrame (before, after, change)."""
        # memory: pandas only where a table is shown
        import pandas as pd
        df = pd.DataFrame(self.data['metrics']).T
        df = df.reindex(columns=['before', 'after'])
        df['change'] = df['after'] - df['before']
        return df.round(4)

    def save(self, directory=None):
        """Write `<notebook>.json` to `directory`; return its path."""
        self.data['elapsed_s'] = round(time.time() - self._start, 1)
        self.data['peak_rss_mb'] = round(peak_rss_mb())
        path = Path(results_dir(directory)) / f'{self.data["notebook"]}.json'
        path.write_text(json.dumps(self.data, indent=1))
        return path


def load(path):
    """Read a saved record."""
    return json.loads(Path(path).read_text())


def seeds_path(directory, notebook):
    """Where the record of a notebook's several seeds is kept."""
    return Path(directory) / f'{notebook}.seeds.json'


def parse_seeds(text):
    """Seeds from a comma list ('0,1,2'): distinct whole numbers >= 0."""
    parts = [p.strip() for p in str(text).split(',') if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f'{text!r} is not a comma list of whole numbers '
                         f'(0,1,2)')
    if not seeds or min(seeds) < 0 or len(set(seeds)) < len(seeds):
        raise ValueError(f'needs distinct whole numbers of at least 0, got '
                         f'{text!r}')
    return seeds


def _spread(values):
    """Per-seed values with their mean, sample standard deviation (0 for
    one seed), smallest and largest; None where a seed has no value."""
    known = [v for v in values if v is not None]
    if not known:
        return {'values': values}
    return {'values': values, 'mean': statistics.fmean(known),
            'std': statistics.stdev(known) if len(known) > 1 else 0.0,
            'min': min(known), 'max': max(known)}


def merge(records):
    """One record from the records of one notebook run once per seed.

    Each metric (before and after) and threshold holds its per-seed
    `values`, `mean`, `std`, `min` and `max`; each claim holds `holds_in`
    (the seeds it held in), `seeds` (the seeds that tested it), `holds`
    (whether it held in all of them) and each seed's `evidence`. The
    seeds' own records stay under `runs`.
    """
    if not records:
        raise ValueError('no records to merge')
    seeds = [r['seed'] for r in records]
    out = {k: records[0][k] for k in ('notebook', 'profile', 'model',
                                      'device', 'dtype') if k in records[0]}
    out.update(seeds=seeds,
               elapsed_s=round(sum(r['elapsed_s'] or 0 for r in records), 1),
               peak_rss_mb=max(r['peak_rss_mb'] or 0 for r in records),
               metrics={}, thresholds={}, claims=[], runs=records)
    keys = list(dict.fromkeys(k for r in records for k in r['metrics']))
    for key in keys:
        sides = {}
        for side in ('before', 'after'):
            values = [r['metrics'].get(key, {}).get(side) for r in records]
            if any(v is not None for v in values):
                sides[side] = _spread(values)
        out['metrics'][key] = sides
    for key in dict.fromkeys(k for r in records for k in r['thresholds']):
        out['thresholds'][key] = _spread(
            [r['thresholds'].get(key) for r in records])
    ids = list(dict.fromkeys(c['id'] for r in records for c in r['claims']))
    for cid in ids:
        tested = [(r['seed'], c) for r in records for c in r['claims']
                  if c['id'] == cid]
        held = sum(c['holds'] for _, c in tested)
        out['claims'].append({
            'id': cid, 'holds_in': held, 'seeds': len(tested),
            'holds': held == len(tested),
            'evidence': {str(seed): c['evidence'] for seed, c in tested}})
    return out
