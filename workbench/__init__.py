"""LLM Unlearning Workbench: shared code for the notebooks and the CLI.

The notebooks in `notebooks/` follow one paper each; this package holds what
they share: run profiles, model loading, data, the training loop, metrics,
live figures and the results record.
"""
import ctypes
import sys

__version__ = '0.1.0'


class WorkbenchError(Exception):
    """An error the user can fix; the CLI prints it as one line."""


def _malloc_settings():
    """glibc's allocator settings for CPU runs (Linux).

    glibc raises its mmap threshold as large blocks are freed, after which
    the logits of a 49k vocabulary land on the heap and fragment it. Fixed
    settings avoid that: blocks from WORKBENCH_MMAP_THRESHOLD bytes up get
    their own mapping, and up to WORKBENCH_TRIM_THRESHOLD bytes of free
    heap are kept for reuse rather than returned and faulted in again.
    """
    import os
    if not sys.platform.startswith('linux'):
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(-3, int(os.environ.get(  # M_MMAP_THRESHOLD
            'WORKBENCH_MMAP_THRESHOLD', 1 << 16)))
        if os.environ.get('WORKBENCH_TRIM_THRESHOLD'):
            libc.mallopt(-1, int(os.environ[  # M_TRIM_THRESHOLD
                'WORKBENCH_TRIM_THRESHOLD']))
    except (OSError, AttributeError, ValueError):
        pass


_malloc_settings()
