"""The heap: glibc allocator settings for CPU runs. Changes no number.

Training and measuring allocate and free the same large tensors over and
over; glibc's defaults either fault in fresh pages for each (a third of
the CPU time on 2 cores) or let the heap fragment. `configure` fixes the
settings once (the models' loaders call it), `reusing_heap` keeps freed
blocks for reuse inside a training loop or a measurement. Nothing here
changes what is computed: skip it when reading the methods.
"""
import contextlib
import ctypes
import functools
import os
import sys
import threading

_LIBC = None  # glibc, on Linux
_MMAP_THRESHOLD = 1 << 16  # the fixed mmap threshold (bytes) outside
_MEASURING_LIMIT = 32 << 20  # ... inside a measurement (`reusing_heap`)
TRAINING_LIMIT = 4 << 20  # ... inside a training loop that reuses the heap
_depth = 0
_limit = _MMAP_THRESHOLD  # the threshold in force
_lock = threading.Lock()
_configured = False


def configure():
    """glibc's allocator settings for CPU runs (Linux).

    glibc raises its mmap threshold as large blocks are freed, after which
    the logits of a 49k vocabulary land on the heap and fragment it. Fixed
    settings avoid that: blocks from WORKBENCH_MMAP_THRESHOLD bytes up get
    their own mapping, and up to WORKBENCH_TRIM_THRESHOLD bytes of free
    heap are kept for reuse rather than returned and faulted in again.
    """
    global _LIBC, _MMAP_THRESHOLD, _limit, _configured
    if _configured:
        return
    _configured = True
    if not sys.platform.startswith('linux'):
        return
    try:
        libc = ctypes.CDLL('libc.so.6')
        _MMAP_THRESHOLD = int(os.environ.get('WORKBENCH_MMAP_THRESHOLD',
                                             _MMAP_THRESHOLD))
        libc.mallopt(-3, _MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        _limit = _MMAP_THRESHOLD
        if os.environ.get('WORKBENCH_TRIM_THRESHOLD'):
            libc.mallopt(-1, int(os.environ[  # M_TRIM_THRESHOLD
                'WORKBENCH_TRIM_THRESHOLD']))
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        _LIBC = libc
    except (OSError, AttributeError, ValueError):
        pass


@contextlib.contextmanager
def reusing_heap(limit=_MEASURING_LIMIT):
    """Inside, freed blocks up to `limit` bytes stay in the heap for reuse.

    A training step or a measurement allocates and frees the same large
    tensors over and over (activations, logits, attention temporaries);
    with the fixed low mmap threshold each gets a fresh mapping, faulted in
    page by page, which took about a third of the CPU time on 2 cores.
    Inside, such blocks come from the heap and are reused. On entering and
    leaving the outermost block, the heap's free pages are returned
    (`malloc_trim`), so what runs inside starts from what is in use, and
    what runs after gets the memory back. A nested block has its own limit
    until it ends; where that limit differs from the one around it (an
    evaluation inside a training loop), the free pages are returned on
    entering and leaving it too, so the evaluation's tensors and the
    training step's freed activations do not both stay resident. The cost
    is memory: the heap keeps the holes that freed blocks leave, which is
    why training keeps a lower limit (`TRAINING_LIMIT`: a micro-batch's
    activations, not its logits).
    """
    global _depth, _limit
    configure()
    if _LIBC is None:
        yield
        return
    with _lock:
        _depth += 1
        outer = _limit
        _limit = max(_MMAP_THRESHOLD, limit)
        # outermost, or a change of use (an evaluation inside training):
        # the free space one use left behind does not fit the other
        trim = _depth == 1 or _limit != outer
        if trim:
            _LIBC.malloc_trim(0)
        _LIBC.mallopt(-3, _limit)
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            _limit = outer
            _LIBC.mallopt(-3, _limit)
            if trim:
                _LIBC.malloc_trim(0)


def measuring(fn):
    """Run `fn` (a no-grad measurement) with heap reuse (`reusing_heap`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with reusing_heap():
            return fn(*args, **kwargs)
    return wrapper

