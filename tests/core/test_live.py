"""Widget panels and live figures, exercised without a browser."""
import json

import pytest

from workbench.core import live
from workbench.methods.ga import GAConfig


def test_panel_builds_sliders_from_the_config_and_runs():
    seen = []
    p = live.panel(GAConfig(lr=1e-4, steps=3), lambda c: seen.append(c) or 7)
    assert set(p.controls) == {'lr', 'steps', 'batch_size', 'micro_batch',
                               'seed'}
    assert abs(p.controls['lr'].value - 1e-4) < 1e-12
    p.controls['steps'].value = 5
    assert p.run() == 7
    assert seen[-1].steps == 5 and isinstance(seen[-1].steps, int)
    p.button.click()  # the Run button calls the same path
    assert len(seen) == 2


def test_panel_offers_choices_as_dropdowns():
    from workbench.methods.seul import SeULConfig
    p = live.panel(SeULConfig(), lambda c: c)
    assert p.controls['selector'].options == ('original', 'current')
    p.controls['selector'].value = 'current'
    p.controls['quantile'].value = 0.5
    cfg = p.run()
    assert cfg.selector == 'current' and cfg.quantile == 0.5


def test_panel_shows_errors_instead_of_losing_them():
    def boom(config):
        raise ValueError('bad value')
    p = live.panel(GAConfig(), boom)
    p.button.click()
    assert not p.button.disabled


def test_live_figure_collects_events():
    fig = live.LiveFigure({'loss': ['loss'], 'MA': ['forget/MA',
                                                     'retain/MA']})
    fig.show()
    for step in range(3):
        fig({'step': step, 'kind': 'step', 'loss': -step})
        fig({'step': step, 'kind': 'eval', 'forget/MA': 1 - step / 10})
    static = fig.figure()
    assert list(static.data[0].y) == [0, -1, -2]
    assert list(static.data[1].y) == [1.0, 0.9, 0.8]
    assert len(static.data[2].y) == 0
    if fig._widget is not None:
        assert list(fig._widget.data[1].y) == [1.0, 0.9, 0.8]
    fig.reset()
    assert len(fig.figure().data[0].y) == 0


def test_on_colab_the_live_figure_redraws_through_its_display_handle(
        monkeypatch):
    """Colab's widget manager shows a FigureWidget as an empty box: there
    the figure is a plain one, replaced in place through its handle."""
    import sys
    import types
    monkeypatch.setitem(sys.modules, 'google.colab',
                        types.ModuleType('google.colab'))
    monkeypatch.delenv('WORKBENCH_HEADLESS', raising=False)
    shown = []

    class Handle:
        def update(self, obj):
            shown.append(obj)

    def display(obj, display_id=False):
        shown.append(obj)
        return Handle() if display_id else None
    monkeypatch.setattr(live, 'display', display)
    fig = live.LiveFigure({'loss': ['loss']}).show()
    assert fig._widget is None and len(shown) == 1
    fig({'step': 1, 'kind': 'eval', 'loss': 0.5})
    assert len(shown) == 2 and list(shown[-1].data[0].y) == [0.5]
    assert all(type(f).__name__ == 'Figure' for f in shown)


def test_across_seeds_reads_the_record_of_several_seeds(tmp_path, capsys,
                                                        monkeypatch):
    """A notebook's table of seeds: from `run --seeds`'s record of this
    profile, else one line saying how to write it."""
    from workbench.core import live, record
    shown = []
    monkeypatch.setattr(live, 'display', shown.append)
    assert live.across_seeds('03_x', 'cpu', tmp_path, ['forget/MA']) is None
    assert ('python -m workbench run 03_x --profile cpu --seeds 0,1,2'
            in capsys.readouterr().out)
    runs = [{'notebook': '03_x', 'profile': 'cpu', 'seed': s,
             'elapsed_s': 1.0, 'peak_rss_mb': 1, 'thresholds': {},
             'metrics': {'forget/MA': {'before': 0.9, 'after': 0.1 * s}},
             'claims': [{'id': 'forgets', 'holds': s != 2,
                         'evidence': f'MA {0.1 * s:.1f}'}]}
            for s in (0, 1, 2)]
    record.seeds_path(tmp_path, '03_x').write_text(
        json.dumps(record.merge(runs)))
    table = live.across_seeds('03_x', 'cpu', tmp_path,
                              ['forget/MA', 'not/recorded'])
    assert table.loc['forgets', 'holds in'] == '2 of 3'
    assert table.loc['forgets', 'seed 2'] == 'MA 0.2'
    (fig,) = shown
    assert len(fig.layout.annotations) == 1  # one panel: forget/MA
    assert sorted(fig.data[1].y) == pytest.approx([0.0, 0.1, 0.2])
    assert live.across_seeds('03_x', 'smoke', tmp_path) is None  # not its
