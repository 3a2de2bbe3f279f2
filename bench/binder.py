"""Memory of the notebooks as mybinder runs them: a Jupyter server, a
kernel started through it, and whatever children the kernel starts, all
in one container of 2 GiB.

    python bench/binder.py --notebooks 00,04 --out bench/binder.json
    python bench/binder.py --profile cpu                   # all of them

Starts JupyterLab's server as Binder does (`jupyter lab`, no browser),
then for each notebook: its parameters injected by papermill (the
profile, a temporary results folder), a fresh kernel started through the
server's REST API, every code cell sent over the kernel's websocket as a
browser sends it, and the kernel shut down at the end. A thread samples
the server's process tree (the server, the kernel, and the kernel's
children: an annotator or a conversion) every 0.2 s. Reports for each
notebook:
- `peak_tree_gib`: the largest sum of the tree's proportional set size
  (PSS: a page shared by several processes, torch's libraries say, is
  split among them), which is what the container's memory limit counts
  of these processes;
- `peak_tree_rss_gib`: the same sum of resident sizes (shared pages
  counted in each process: an upper bound);
- `peak_tree_anon_gib`: the tree's anonymous memory (resident, less the
  pages mapped from files: the model's weights, which load mapped from
  their safetensors file, and the libraries), the part the kernel cannot
  reclaim under the limit and the OOM killer counts;
- `peak_kernel_gib`: the kernel's own largest resident size;
- wall minutes, and the failing cell if one failed;
- each code cell's peak tree PSS (`cell_peaks_gib`, in order) and the
  three largest with their first line (`largest_cells`): where to look
  when a notebook passes the limit.

The goal (`--limit-gib`, 1.8) leaves room under mybinder's 2 GiB for
what the tree does not hold (the kernel's page cache, the terminal).
Exit status 1 when a notebook fails or passes the limit.
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'bench'))
from run import notebook_names, save  # noqa: E402

GIB = 2 ** 30


class TreeSampler(threading.Thread):
    """The peak memory of a process and all its descendants."""

    def __init__(self, root_pid, every=0.2):
        super().__init__(daemon=True)
        self.root, self.every = psutil.Process(root_pid), every
        self.kernel_pids = set()
        self.reset()
        self._stop = threading.Event()

    def reset(self):
        self.peak_pss = self.peak_rss = self.peak_anon = 0
        self.peak_kernel = self.cell_pss = 0

    def sample(self):
        pss = rss = anon = kernel = 0
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        for p in procs:
            try:
                info = p.memory_full_info()
            except psutil.Error:  # gone between listing and reading
                continue
            pss, rss = pss + info.pss, rss + info.rss
            anon += info.rss - info.shared  # shared: file-backed pages
            if p.pid in self.kernel_pids:
                kernel = max(kernel, info.rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.cell_pss = max(self.cell_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        self.peak_kernel = max(self.peak_kernel, kernel)

    def run(self):
        while not self._stop.wait(self.every):
            self.sample()

    def stop(self):
        self._stop.set()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def start_server(port, token):
    """JupyterLab's server, as a Binder session starts it."""
    log = open(Path(tempfile.gettempdir()) / f'binder-bench-{port}.log', 'w')
    server = subprocess.Popen(
        [sys.executable, '-m', 'jupyterlab', '--no-browser',
         f'--port={port}', '--ip=127.0.0.1',
         f'--IdentityProvider.token={token}',
         f'--ServerApp.root_dir={ROOT}', '--allow-root'],
        stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=1):
                return server
        except OSError:
            if server.poll() is not None:
                break
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f'the Jupyter server did not start (see {log.name})')


def message(session, code):
    return {'header': {'msg_id': uuid.uuid4().hex, 'session': session,
                       'username': 'bench', 'msg_type': 'execute_request',
                       'version': '5.3'},
            'parent_header': {}, 'metadata': {}, 'channel': 'shell',
            'content': {'code': code, 'silent': False, 'store_history': True,
                        'user_expressions': {}, 'allow_stdin': False,
                        'stop_on_error': True}}


async def run_cells(port, token, cells, sampler, per_cell, timeout=3600):
    """Start a kernel through the server, run `cells` on it over its
    websocket, shut it down; returns None, or the failing cell and its
    error. Appends each cell's peak tree PSS (GiB) to `per_cell`."""
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest
    from tornado.websocket import websocket_connect
    base = f'127.0.0.1:{port}'
    auth = {'Authorization': f'token {token}'}
    http = AsyncHTTPClient()
    reply = await http.fetch(f'http://{base}/api/kernels', method='POST',
                             headers=auth, body=json.dumps(
                                 {'name': 'python3', 'path': 'notebooks'}))
    kernel = json.loads(reply.body)['id']
    session = uuid.uuid4().hex
    ws = await websocket_connect(HTTPRequest(
        f'ws://{base}/api/kernels/{kernel}/channels?session_id={session}',
        headers=auth))
    server = psutil.Process(sampler.root.pid)
    sampler.kernel_pids = {p.pid for p in server.children()}
    failure = None
    try:
        for i, code in enumerate(cells):
            msg = message(session, code)
            sampler.cell_pss = 0
            await ws.write_message(json.dumps(msg))
            while True:
                raw = await asyncio.wait_for(ws.read_message(), timeout)
                if raw is None:
                    return {'cell': i, 'error': 'the kernel died'}
                if not isinstance(raw, str):  # a widget's binary buffers
                    continue
                m = json.loads(raw)
                if m['parent_header'].get('msg_id') != msg['header'][
                        'msg_id']:
                    continue
                if m['msg_type'] == 'error':
                    failure = {'cell': i, 'error': f"{m['content']['ename']}"
                               f": {m['content']['evalue']}"[:500]}
                if m['msg_type'] == 'execute_reply':
                    sampler.sample()
                    per_cell.append(sampler.cell_pss / GIB)
                    break
            if failure:
                return failure
        return None
    finally:
        ws.close()
        await http.fetch(f'http://{base}/api/kernels/{kernel}',
                         method='DELETE', headers=auth)


def prepared_cells(name, profile, out):
    """The notebook's code cells with its parameters injected (papermill,
    as `workbench run` injects them)."""
    import nbformat
    import papermill as pm
    src = ROOT / 'notebooks' / f'{name}.ipynb'
    dst = Path(out) / src.name
    pm.execute_notebook(str(src), str(dst), prepare_only=True,
                        parameters={'profile': profile,
                                    'results_dir': str(out)},
                        progress_bar=False)
    nb = nbformat.read(dst, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == 'code']


def measure(names, profile, limit, out=None):
    # killed, it still stops its server and kernels (the `finally` below)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    port, token = free_port(), uuid.uuid4().hex
    server = start_server(port, token)
    sampler = TreeSampler(server.pid)
    sampler.start()
    results, failed = {}, []
    try:
        time.sleep(2)
        sampler.sample()
        idle = sampler.peak_pss / GIB
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                cells = prepared_cells(name, profile, tmp)
                sampler.reset()
                t, per_cell = time.perf_counter(), []
                failure = asyncio.run(run_cells(port, token, cells, sampler,
                                                per_cell))
                top = sorted(range(len(per_cell)), key=per_cell.__getitem__,
                             reverse=True)[:3]
                entry = {'profile': profile,
                         'minutes': (time.perf_counter() - t) / 60,
                         'peak_tree_gib': sampler.peak_pss / GIB,
                         'peak_tree_rss_gib': sampler.peak_rss / GIB,
                         'peak_tree_anon_gib': sampler.peak_anon / GIB,
                         'peak_kernel_gib': sampler.peak_kernel / GIB,
                         'server_idle_gib': idle,
                         'cell_peaks_gib': per_cell,
                         'largest_cells': [
                             {'cell': i, 'peak_tree_gib': per_cell[i],
                              'code': cells[i].strip().split('\n')[0][:80]}
                             for i in top]}
                if failure:
                    entry['failed'] = failure
            results[name] = entry
            over = entry['peak_tree_gib'] >= limit
            if failure or over:
                failed.append(name)
            print(f"{name} {profile}: {entry['minutes']:.1f} min, tree "
                  f"{entry['peak_tree_gib']:.2f} GiB (RSS sum "
                  f"{entry['peak_tree_rss_gib']:.2f}, anonymous "
                  f"{entry['peak_tree_anon_gib']:.2f}), kernel "
                  f"{entry['peak_kernel_gib']:.2f} GiB"
                  + (f"; FAILED in cell {failure['cell']}: "
                     f"{failure['error']}" if failure else '')
                  + ('; OVER the limit' if over else ''), flush=True)
            for c in entry['largest_cells']:
                print(f"    cell {c['cell']}: {c['peak_tree_gib']:.2f} GiB  "
                      f"{c['code']}", flush=True)
            if out:
                save({'limit_gib': limit, 'notebooks': results}, out)
    finally:
        sampler.stop()
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    return results, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--profile', default='cpu')
    parser.add_argument('--notebooks', default='',
                        help='numbers or names, comma-separated (all: empty)')
    parser.add_argument('--limit-gib', type=float, default=1.8)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    names = notebook_names(args.notebooks)
    _, failed = measure(names, args.profile, args.limit_gib,
                        Path(args.out) if args.out else None)
    if failed:
        print(f'failed or over {args.limit_gib} GiB: {", ".join(failed)}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
