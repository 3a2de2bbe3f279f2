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
