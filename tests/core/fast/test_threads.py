"""Threads from the container's CPU quota."""
import torch

from workbench.core.fast import threads


def test_the_quota_is_read_from_cgroup_v2_and_v1(tmp_path):
    (tmp_path / 'cpu.max').write_text('150000 100000\n')
    assert threads.cpu_quota(tmp_path) == 2  # 1.5 CPUs: 2 threads
    (tmp_path / 'cpu.max').write_text('max 100000\n')
    assert threads.cpu_quota(tmp_path) is None  # no quota
    (tmp_path / 'cpu.max').unlink()
    (tmp_path / 'cpu').mkdir()
    (tmp_path / 'cpu' / 'cpu.cfs_quota_us').write_text('100000\n')
    (tmp_path / 'cpu' / 'cpu.cfs_period_us').write_text('100000\n')
    assert threads.cpu_quota(tmp_path) == 1
    (tmp_path / 'cpu' / 'cpu.cfs_quota_us').write_text('-1\n')
    assert threads.cpu_quota(tmp_path) is None
    assert threads.cpu_quota(tmp_path / 'absent') is None


def test_torch_takes_as_many_threads_as_the_quota(tmp_path, monkeypatch):
    (tmp_path / 'cpu.max').write_text('100000 100000\n')
    monkeypatch.setattr(threads, 'CGROUP', tmp_path)
    monkeypatch.setattr(threads, '_configured', False)
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    was = torch.get_num_threads()
    monkeypatch.setattr(torch, 'get_num_threads', lambda: 16)
    set_to = []
    monkeypatch.setattr(torch, 'set_num_threads', set_to.append)
    threads.configure()
    assert set_to == [1]
    # OMP_NUM_THREADS wins
    monkeypatch.setattr(threads, '_configured', False)
    monkeypatch.setenv('OMP_NUM_THREADS', '3')
    set_to.clear()
    threads.configure()
    assert set_to == [] and was >= 1
