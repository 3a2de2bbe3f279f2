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


def _fixed_mmap_threshold():
    """Give large freed tensors back to the system at once (glibc).

    glibc raises its mmap threshold as large blocks are freed, after which
    the logits of a 49k vocabulary land on the heap and fragment it: peak
    memory of a CPU run grows by hundreds of MB. A fixed threshold keeps
    every block over 64 KiB in its own mapping.
    """
    if sys.platform.startswith('linux'):
        try:
            ctypes.CDLL('libc.so.6').mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
        except (OSError, AttributeError):
            pass


_fixed_mmap_threshold()
