"""The one on-disk cache: converted models, trained roles, implanted models,
annotations, embeddings and measurements, each an entry built once.

An entry is a folder `cache_dir()/kind/key` (`key` a hash of everything
that makes the entry what it is). It is built in a temporary folder beside
it, its files' sizes and SHA-256 sums written to `manifest.json`, and only
then renamed into place: a reader never sees half an entry. One lock per
entry, across processes: two notebooks (or two test workers) needing the
same entry take turns, and the second loads what the first built. An entry
whose files no longer match its manifest, or that fails to load, is removed
and rebuilt, with a note saying so.
"""
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

from filelock import FileLock

from .paths import cache_dir

MANIFEST = 'manifest.json'
_checked = set()  # entries verified by this process: (path, manifest's mtime)


def entry_path(kind, key):
    """Where the entry `kind/key` lives (whether or not it is built)."""
    return cache_dir() / kind / key


def key_of(*parts):
    """A short hash of plain data (JSON-serialisable), to name an entry."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _lock(kind, key):
    locks = cache_dir() / 'locks'
    locks.mkdir(exist_ok=True)
    return FileLock(str(locks / f'{kind}-{key}.lock'))


def _sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(folder):
    return sorted(p for p in Path(folder).rglob('*')
                  if p.is_file() and p.name != MANIFEST)


def _problem(path):
    """Why the entry at `path` cannot be used, or None when it is whole."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        stamp = (str(path), (path / MANIFEST).stat().st_mtime_ns)
        files = {str(p.relative_to(path)): p for p in _files(path)}
        if set(files) != set(manifest['files']):
            return 'its files are not those of its manifest'
        for name, (size, digest) in manifest['files'].items():
            if files[name].stat().st_size != size:
                return f'{name} has the wrong size'
        if stamp in _checked:
            return None
        for name, (size, digest) in manifest['files'].items():
            if _sha256(files[name]) != digest:
                return f'{name} does not match its checksum'
        _checked.add(stamp)
        return None
    except FileNotFoundError:
        return 'it has no manifest (a build was cut short, or an older cache)'
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f'its manifest is unreadable ({e})'


def is_cached(kind, key):
    """Whether the entry `kind/key` is built and whole."""
    path = entry_path(kind, key)
    return path.is_dir() and _problem(path) is None


def _out_of_memory(error):
    return isinstance(error, MemoryError) or 'OutOfMemory' in type(
        error).__name__


def _discard(path, kind, why):
    print(f'{kind} cache entry {path.name}: {why}; rebuilding',
          file=sys.stderr, flush=True)
    shutil.rmtree(path, ignore_errors=True)


def cached(kind, key, build, load):
    """`load(folder)` of the entry `kind/key` when it is built and whole,
    else `build(folder)`, which writes the entry's files into an empty
    temporary folder and returns what the caller wants (often what it just
    saved, so nothing is read back). Returns (value, whether the cache was
    hit). An exception from `build` leaves no entry behind."""
    path = entry_path(kind, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(kind, key):
        if path.exists():
            why = _problem(path)
            if why is None:
                try:
                    return load(path), True
                except Exception as e:  # a file that no longer loads
                    if _out_of_memory(e):  # the entry is fine; memory is not
                        raise
                    why = f'it does not load ({type(e).__name__}: {e})'
            _discard(path, kind, why)
        # under the lock no one else builds this entry: any temporary
        # folder of it is what a build cut short left behind
        for stale in path.parent.glob(f'{path.name}.*.tmp'):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp')
        tmp.mkdir()
        try:
            value = build(tmp)
            manifest = {str(p.relative_to(tmp)): [p.stat().st_size,
                                                  _sha256(p)]
                        for p in _files(tmp)}
            (tmp / MANIFEST).write_text(json.dumps({'files': manifest},
                                                   indent=1))
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _checked.add((str(path), (path / MANIFEST).stat().st_mtime_ns))
        return value, False


def cached_json(kind, key, compute):
    """`compute()` (plain data), kept as the entry `kind/key`. Returns
    (value, whether the cache was hit)."""
    def build(folder):
        value = compute()
        (folder / 'value.json').write_text(json.dumps(value))
        return value

    def load(folder):
        return json.loads((folder / 'value.json').read_text())
    return cached(kind, key, build, load)
