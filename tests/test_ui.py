"""The notebooks as a user sees them: JupyterLab served on loopback, opened
in headless Chromium (Debian's package, driven by Playwright for Python).

The tour runs on `smoke`; its widget panel and live plotly figure must
render, and moving the `steps` slider and pressing Run must redraw the
figure from the new run. Screenshots go to results/ui/.
"""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.ui

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get('WORKBENCH_CHROMIUM', '/usr/bin/chromium')
SHOTS = ROOT / 'results' / 'ui'
ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
        '--disable-background-networking', '--disable-component-update',
        '--disable-sync']
FIGURE_TITLE = 'Gradient ascent on the forget set'


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def lab(tmp_path_factory):
    """JupyterLab on loopback serving the tour, parameterised to smoke
    with three gradient-ascent steps."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f'{CHROMIUM} is missing: `make test` installs Debian\'s '
                    f'chromium (apt-get install chromium)')
    import papermill
    root = tmp_path_factory.mktemp('lab')
    papermill.execute_notebook(
        str(ROOT / 'notebooks' / '00_tour.ipynb'), str(root / 'tour.ipynb'),
        # three steps: enough for a curve, and the page is up in minutes
        parameters={'profile': 'smoke', 'steps': 3,
                    'results_dir': str(root)},
        prepare_only=True,
        progress_bar=False)
    port = _free_port()
    env = {k: v for k, v in os.environ.items()
           if k != 'WORKBENCH_HEADLESS'}
    env['JUPYTER_CONFIG_DIR'] = str(root / '.jupyter')
    log = open(root / 'lab.log', 'w')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'jupyterlab', '--no-browser', '--allow-root',
         '--ServerApp.ip=127.0.0.1', f'--ServerApp.port={port}',
         '--ServerApp.token=', '--ServerApp.password=',
         '--ServerApp.disable_check_xsrf=True',
         f'--ServerApp.root_dir={root}', '--LabApp.news_url=None',
         '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f'http://127.0.0.1:{port}'
    for _ in range(120):
        try:
            urllib.request.urlopen(f'{url}/api/status', timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail('JupyterLab exited: '
                            + (root / 'lab.log').read_text()[-2000:])
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail('JupyterLab did not start in 60 s')
    yield url
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _figure_data(page):
    """x and y of every trace of the live figure, read in the browser."""
    return page.evaluate("""title => {
        for (const el of document.querySelectorAll('.js-plotly-plot')) {
            const t = el.querySelector('.gtitle');
            if (t && t.textContent === title && el.data)
                return el.data.map(d => [Array.from(d.x || []),
                                         Array.from(d.y || [])]);
        }
        return null;
    }""", FIGURE_TITLE)


def _idle(page):
    """Every cell has run: no prompt shows [*] and the last one has a
    number."""
    return page.evaluate("""() => {
        const p = Array.from(document.querySelectorAll(
            '.jp-CodeCell .jp-InputPrompt')).map(e => e.textContent.trim());
        return p.length > 0 && !p.some(t => t.includes('*'))
            && /\\d/.test(p[p.length - 1]);
    }""")


def _wait(what, check, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f'timed out after {timeout} s waiting for {what}')


def test_tour_panel_and_figure_render_and_respond(lab):
    from playwright.sync_api import sync_playwright
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={'width': 1400, 'height': 1000})
        errors = []
        page.on('console', lambda m: errors.append(m.text)
                if m.type == 'error' else None)
        page.goto(f'{lab}/lab/tree/tour.ipynb')
        page.wait_for_selector('.jp-Notebook .jp-Cell', timeout=120_000)
        _wait('the kernel', lambda: page.locator(
            '.jp-Notebook-ExecutionIndicator, .jp-KernelStatus').count(), 60)
        time.sleep(3)
        page.get_by_role('menuitem', name='Run', exact=True).click()
        page.get_by_role('menuitem', name='Run All Cells', exact=True).click()

        button = page.get_by_role('button', name='Run gradient ascent')
        # the set-up cells before it implant the people on a fresh cache (or
        # wait for the test worker that does): minutes on a busy 2-core box
        button.wait_for(timeout=600_000)
        _wait('the live figure', lambda: _figure_data(page), 300)
        _wait('Run All to finish', lambda: _idle(page), 900)
        first = _figure_data(page)
        steps_run = len(first[0][0])
        assert steps_run >= 2, f'the first run drew {steps_run} points'
        news = page.get_by_role('button', name='No', exact=True)
        if news.count():  # JupyterLab's "news?" notification
            news.first.click()
        cell = page.locator('.jp-CodeCell').filter(has=button)
        cell.screenshot(path=str(SHOTS / 'tour_first_run.png'))

        # the steps slider: down to 1 by keyboard, as a user would
        slider = page.locator('.widget-slider').filter(has_text='steps')
        handle = slider.locator('.noUi-handle').first
        handle.focus()
        for _ in range(60):
            handle.press('ArrowLeft')
        _wait('the slider to read 1', lambda: slider.locator(
            '.widget-readout').text_content().strip() == '1', 30)
        button.click()
        _wait('the second run', lambda: (
            button.is_enabled() and _figure_data(page) != first), 600)
        _wait('the button to come back', button.is_enabled, 600)
        second = _figure_data(page)
        cell.screenshot(path=str(SHOTS / 'tour_second_run.png'))
        browser.close()
    # the figure was reset and redrawn from a one-step run
    assert second != first
    assert max(second[0][0]) <= 1 < max(first[0][0])
    (SHOTS / 'console_errors.txt').write_text('\n'.join(errors))
    bad = [e for e in errors if 'widget' in e.lower()
           or 'plotly' in e.lower()]
    assert not bad, bad

