"""Widget panels and live figures, exercised without a browser."""
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
