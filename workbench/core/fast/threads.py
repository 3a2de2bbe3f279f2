"""Threads from the CPU quota: speed only (a sum split over other threads
rounds differently, nothing more); skip it when reading the methods.

PyTorch starts one thread per core of the machine, and a container that
may use 1 or 2 CPUs of a 16-core host (mybinder, Kubernetes) still sees
16 cores: 16 threads then share 2 CPUs' time and most of it goes to
waiting. `configure` sets the thread count to the container's quota
(cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), and to the CPUs this
process may run on, unless OMP_NUM_THREADS says otherwise.
"""
import math
import os
from pathlib import Path

import torch

CGROUP = Path('/sys/fs/cgroup')
_configured = False


def cpu_quota(root=None):
    """CPUs the container's quota allows (rounded up), or None without
    a quota."""
    root = CGROUP if root is None else root
    try:
        quota, period = (root / 'cpu.max').read_text().split()[:2]
        if quota != 'max':
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / 'cpu' / 'cpu.cfs_quota_us').read_text())
        period = int((root / 'cpu' / 'cpu.cfs_period_us').read_text())
        return max(1, math.ceil(quota / period)) if quota > 0 else None
    except (OSError, ValueError):
        return None


def cpus_available(root=None):
    """The CPUs this process can use: its affinity, capped by the quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') \
        else os.cpu_count()
    quota = cpu_quota(root)
    return min(n, quota) if quota else n


def configure():
    """torch's thread count from the CPUs available (once; an explicit
    OMP_NUM_THREADS wins)."""
    global _configured
    if _configured:
        return
    _configured = True
    if os.environ.get('OMP_NUM_THREADS'):
        return
    n = cpus_available()
    if n < torch.get_num_threads():
        torch.set_num_threads(n)
