"""LLM Unlearning Workbench: shared code for the notebooks and the command
line.

The notebooks in `notebooks/` follow one paper each. This package holds
what they share, in layers; an arrow is "may import":

    core  <-  methods, metrics  <-  experiments  <-  cli (and notebooks)

- `core/`: knows no paper: paths and the cache, profiles, models, data,
  the training loop, roles, scoring, live figures, the results record;
  `core/fast/` only makes things faster and changes no number.
- `methods/`: one file per method, each a short paper's core beside its
  equations; `methods.REGISTRY` names every LM method and `methods.run`
  drives any of them through the one training loop.
- `metrics/`: plain functions of a model and token ids, as the papers
  define them.
- `experiments/`: one module per notebook, named as the notebook (the
  set-up, its data, its measurements), and the implanted-people set-up
  they share (`people`).
- `cli/`: `python -m workbench`.

Nothing imports the command line or a notebook; methods and metrics import
only the core; the core imports neither. `tests/test_layers.py` checks
every import against these rules and finds no cycle.
"""
from .core import WorkbenchError

__version__ = '0.1.0'

__all__ = ['WorkbenchError', '__version__']
