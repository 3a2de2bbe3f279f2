"""LLM Unlearning Workbench: shared code for the notebooks and the CLI.

The notebooks in `notebooks/` follow one paper each; this package holds what
they share: run profiles, model loading, data, the training loop, metrics,
live figures and the results record.
"""
__version__ = '0.1.0'


class WorkbenchError(Exception):
    """An error the user can fix; the CLI prints it as one line."""
