"""The results record: one JSON per notebook or CLI run.

    {"notebook": ..., "profile": ..., "seed": ..., "model": ...,
     "elapsed_s": ..., "peak_rss_mb": ...,
     "metrics": {"forget/EL_10": {"before": ..., "after": ...}, ...},
     "thresholds": {"EL_10": ..., "MA": ...},
     "claims": [{"id": ..., "holds": ..., "evidence": ...}]}

Claims are computed from the metrics by the code that records them, never
written by hand.
"""
import json
import resource
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
        self.data = {'notebook': notebook, 'profile': profile, 'seed': seed,
                     'model': model, 'elapsed_s': None, 'peak_rss_mb': None,
                     'metrics': {}, 'thresholds': {}, 'claims': []}
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
