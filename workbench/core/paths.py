"""Where the workbench finds its data and keeps its caches and results.

Resolved from the package location, never from the current directory, so a
notebook runs the same under papermill, Binder and Colab.
"""
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # workbench/
REPO_DIR = PACKAGE_DIR.parent
DATA_DIR = REPO_DIR / 'data'
NOTEBOOK_DIR = REPO_DIR / 'notebooks'


def cache_dir():
    """Converted models and implanted checkpoints (`WORKBENCH_CACHE`)."""
    path = Path(os.environ.get('WORKBENCH_CACHE', REPO_DIR / '.cache'))
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir(path=None):
    """Where records, executed notebooks and HTML copies go."""
    path = Path(path or os.environ.get('WORKBENCH_RESULTS',
                                       REPO_DIR / 'results'))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_lock(name):
    """A lock on one cache entry, across processes: two notebooks (or two
    test workers) that build the same entry at once take turns, and the
    second finds it built."""
    from filelock import FileLock
    locks = cache_dir() / 'locks'
    locks.mkdir(exist_ok=True)
    return FileLock(str(locks / f'{name}.lock'))


def atomic_write(path, text):
    """Write `text` to `path` whole or not at all (a reader never sees half
    a file, two writers never share a temporary file)."""
    path = Path(path)
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
    tmp.write_text(text)
    tmp.replace(path)
