"""The one on-disk cache: built once, atomic, locked, and rebuilt when an
entry is damaged."""
import multiprocessing
import time

import pytest

from workbench.core import cache as disk


def _counting(counter, value='built'):
    """A build that leaves a mark in `counter` each time it runs."""
    def build(folder):
        (counter / f'{time.time_ns()}').touch()
        (folder / 'value.txt').write_text(value)
        return value
    return build


def _read(folder):
    return (folder / 'value.txt').read_text()


def test_an_entry_is_built_once_then_loaded(cache, tmp_path):
    counter = tmp_path / 'builds'
    counter.mkdir()
    assert disk.cached('things', 'k1', _counting(counter), _read) == (
        'built', False)
    assert disk.cached('things', 'k1', _counting(counter), _read) == (
        'built', True)
    assert len(list(counter.iterdir())) == 1
    assert disk.is_cached('things', 'k1')
    assert not disk.is_cached('things', 'k2')
    assert sorted(p.name for p in disk.entry_path('things', 'k1')
                  .iterdir()) == ['manifest.json', 'value.txt']


@pytest.mark.parametrize('damage', ['truncated', 'flipped', 'extra file',
                                    'no manifest', 'does not load'])
def test_a_damaged_entry_is_rebuilt_with_a_note(cache, tmp_path, capsys,
                                                damage):
    counter = tmp_path / 'builds'
    counter.mkdir()
    disk.cached('things', 'k', _counting(counter), _read)
    entry = disk.entry_path('things', 'k')

    def load(folder):
        if damage == 'does not load':
            raise ValueError('unreadable')
        return _read(folder)
    if damage == 'truncated':
        (entry / 'value.txt').write_text('bui')
    elif damage == 'flipped':  # same size: only the checksum tells
        (entry / 'value.txt').write_text('BUILT')
        disk._checked.clear()  # as a new process would
    elif damage == 'extra file':
        (entry / 'stray.bin').write_bytes(b'x')
    elif damage == 'no manifest':
        (entry / 'manifest.json').unlink()
    assert disk.cached('things', 'k', _counting(counter), load) == (
        'built', False)
    assert len(list(counter.iterdir())) == 2
    assert 'things cache entry k:' in capsys.readouterr().err
    assert disk.cached('things', 'k', _counting(counter), _read)[1]


def test_running_out_of_memory_while_loading_keeps_the_entry(cache,
                                                            tmp_path):
    counter = tmp_path / 'builds'
    counter.mkdir()
    disk.cached('things', 'k', _counting(counter), _read)

    def load(folder):
        raise MemoryError
    with pytest.raises(MemoryError):
        disk.cached('things', 'k', _counting(counter), load)
    assert disk.is_cached('things', 'k')
    assert len(list(counter.iterdir())) == 1


def test_a_failed_build_leaves_nothing(cache):
    def build(folder):
        (folder / 'half.txt').write_text('half')
        raise RuntimeError('interrupted')
    with pytest.raises(RuntimeError):
        disk.cached('things', 'k', build, _read)
    assert not disk.entry_path('things', 'k').exists()
    assert list(disk.entry_path('things', 'k').parent.iterdir()) == []


def test_what_a_cut_short_build_left_is_cleared(cache, tmp_path):
    left = disk.entry_path('things', 'k').with_name('k.12345.tmp')
    left.mkdir(parents=True)
    (left / 'half.txt').write_text('half')
    other = disk.entry_path('things', 'k2').with_name('k2.12345.tmp')
    other.mkdir()
    counter = tmp_path / 'builds'
    counter.mkdir()
    assert disk.cached('things', 'k', _counting(counter), _read)[0] == 'built'
    assert not left.exists()
    assert other.exists(), "another entry's build is left alone"


def test_json_values_come_back_equal(cache):
    value = {'MA': 0.5, 'EL_10': [0.1, 0.2]}
    assert disk.cached_json('measured', 'm', lambda: value) == (value, False)
    assert disk.cached_json('measured', 'm', lambda: 1 / 0) == (value, True)


def _build_in(counter):
    disk.cached('things', 'shared', _slow(counter), _read)


def _slow(counter):
    build = _counting(counter)

    def slow(folder):
        time.sleep(0.5)
        return build(folder)
    return slow


def test_two_processes_building_one_entry_take_turns(cache, tmp_path):
    """The second waits on the entry's lock and loads what the first
    built."""
    counter = tmp_path / 'builds'
    counter.mkdir()
    ctx = multiprocessing.get_context('fork')
    workers = [ctx.Process(target=_build_in, args=(counter,))
               for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert len(list(counter.iterdir())) == 1
    assert disk.cached('things', 'shared', _counting(counter), _read) == (
        'built', True)
