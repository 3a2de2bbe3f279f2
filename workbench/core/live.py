"""Widget panels and live plotly figures for the notebooks.

- `panel(config, run)` builds sliders from a method's config dataclass and a
  Run button that calls `run(config)`; `panel.run()` runs it with the
  current values, so a headless (papermill) run exercises the same path.
- `LiveFigure` subscribes to the training loop's events and redraws while a
  run trains: a plotly FigureWidget where it works, else (Colab, whose
  widget manager does not render it; no anywidget) a plain figure
  re-displayed through its display handle. Headless
  (`WORKBENCH_HEADLESS=1`), it draws one static figure at the end, which
  survives export to HTML.
"""
import html
import inspect
import math
import os
import sys
import time
from dataclasses import fields, replace

import ipywidgets as widgets
import plotly.graph_objects as go
from IPython.display import HTML, Code, display
from plotly.subplots import make_subplots

from . import record
from .paths import results_dir
from .scoring import greedy_continue


def is_headless():
    """True when a notebook runs without a browser (papermill, the CLI)."""
    return os.environ.get('WORKBENCH_HEADLESS', '') == '1'


if is_headless():
    # figures also as self-contained HTML, so the exported copy shows them
    import plotly.io as pio
    pio.renderers.default = 'plotly_mimetype+notebook'


def _widget_for(f, value):
    """A widget for one dataclass field, from its type and metadata."""
    meta, desc = f.metadata, f.name
    style = {'description_width': '110px'}
    common = dict(value=value, description=desc, style=style,
                  continuous_update=False)
    if f.type in (bool, 'bool'):
        return widgets.Checkbox(value=value, description=desc, style=style)
    if 'choices' in meta and isinstance(value, tuple):  # pick several
        return widgets.SelectMultiple(options=meta['choices'], value=value,
                                      description=desc, style=style,
                                      rows=len(meta['choices']))
    if 'choices' in meta:
        return widgets.Dropdown(options=meta['choices'], value=value,
                                description=desc, style=style)
    if f.type in (float, 'float') and meta.get('log'):
        return widgets.FloatLogSlider(
            base=10, min=math.log10(meta['min']), max=math.log10(meta['max']),
            step=0.1, readout_format='.1e', **common)
    if f.type in (float, 'float'):
        return widgets.FloatSlider(min=meta.get('min', 0.0),
                                   max=meta.get('max', 1.0),
                                   step=meta.get('step', 0.01),
                                   readout_format='.2f', **common)
    if f.type in (int, 'int'):
        return widgets.IntSlider(min=meta.get('min', 0),
                                 max=meta.get('max', 100), **common)
    return widgets.Text(value=str(value), description=desc, style=style)


class Panel(widgets.VBox):
    """Sliders for a config dataclass, a Run button, and an output area."""

    def __init__(self, config, run, title='Run'):
        self._config, self._run = config, run
        self.controls = {f.name: _widget_for(f, getattr(config, f.name))
                         for f in fields(config)}
        for f in fields(config):
            self.controls[f.name].tooltip = f.metadata.get('help', f.name)
        self.button = widgets.Button(description=title, icon='play',
                                     button_style='primary')
        self.output = widgets.Output()
        self.result = None
        self.button.on_click(lambda _: self._clicked())
        super().__init__([widgets.HBox([widgets.VBox(list(
            self.controls.values())), self.button]), self.output])

    def show(self):
        """Display the panel (headless runs skip it and call `run`)."""
        if not is_headless():
            display(self)
        return self

    def config(self):
        """The config with the widgets' current values."""
        return replace(self._config, **{k: type(getattr(self._config, k))(
            w.value) for k, w in self.controls.items()})

    def run(self):
        """Run with the current values; return the run's result."""
        self.result = self._run(self.config())
        return self.result

    def _clicked(self):
        self.button.disabled = True
        try:
            with self.output:
                self.output.clear_output()
                self.run()
        except Exception as e:  # shown in the panel, not lost in a log
            with self.output:
                print(f'error: {e}')
        finally:
            self.button.disabled = False


def panel(config, run, title='Run'):
    """A widget panel for `config` whose button calls `run(config)`."""
    return Panel(config, run, title)


def _figure_widget_works():
    """Whether a FigureWidget will render here: not on Colab (its widget
    manager shows an empty box), and only where one can be constructed
    (importing it succeeds without anywidget; building one does not)."""
    if 'google.colab' in sys.modules:
        return False
    try:
        go.FigureWidget()
        return True
    except Exception:
        return False


class LiveFigure:
    """A live plot of training events, one subplot per group of keys.

    `groups` maps a subplot title to the event keys drawn in it, e.g.
    {'loss': ['loss'], 'memorisation': ['forget/MA', 'retain/MA']}. Pass
    the object as a training-loop callback.
    """

    def __init__(self, groups, title='', height=320, redraw_every=0.3):
        self.groups, self.title = groups, title
        self.height, self.redraw_every = height, redraw_every
        self.points = {k: ([], []) for keys in groups.values() for k in keys}
        self._last = 0.0
        self._widget = self._handle = None

    def _build(self, widget):
        cols = len(self.groups)
        fig = make_subplots(rows=1, cols=cols,
                            subplot_titles=list(self.groups))
        for c, keys in enumerate(self.groups.values(), start=1):
            for k in keys:
                xs, ys = self.points[k]
                fig.add_trace(go.Scatter(x=list(xs), y=list(ys), name=k,
                                         mode='lines+markers'), row=1, col=c)
                fig.update_xaxes(title_text='step', row=1, col=c)
        fig.update_layout(height=self.height, title=self.title,
                          margin=dict(t=60, b=40, l=40, r=10))
        return go.FigureWidget(fig) if widget else fig

    def show(self):
        """Display the live figure (nothing is shown headless until end)."""
        if is_headless():
            return self
        if _figure_widget_works():
            self._widget = self._build(widget=True)
            display(self._widget)
        else:  # a plain figure, replaced in place at each redraw
            self._handle = display(self._build(widget=False),
                                   display_id=True)
        return self

    def reset(self):
        """Forget all points (for a new run from the panel)."""
        for xs, ys in self.points.values():
            xs.clear()
            ys.clear()
        self._redraw(force=True)

    def __call__(self, event):
        new = False
        for k, (xs, ys) in self.points.items():
            if k in event:
                xs.append(event['step'])
                ys.append(event[k])
                new = True
        if new:
            self._redraw(force=event.get('kind') == 'eval')

    def _redraw(self, force=False):
        now = time.monotonic()
        if not force and now - self._last < self.redraw_every:
            return
        self._last = now
        if self._widget is not None:
            keys = [k for keys in self.groups.values() for k in keys]
            with self._widget.batch_update():
                for trace, k in zip(self._widget.data, keys):
                    trace.x, trace.y = self.points[k]
        elif self._handle is not None:
            self._handle.update(self._build(widget=False))

    def figure(self):
        """A static plotly figure of everything recorded so far."""
        return self._build(widget=False)

    def finish(self):
        """Final redraw; headless, display the static figure."""
        if is_headless():
            display(self.figure())
        else:
            self._redraw(force=True)


def show_source(*fns):
    """Display functions' source, highlighted (the paper's core)."""
    display(Code('\n\n'.join(inspect.getsource(f) for f in fns),
                 language='python'))


def show_people(rows):
    """Display bios with their PII spans highlighted."""
    parts = []
    for r in rows:
        text, out, last = r['text'], [], 0
        for start, end, kind in sorted(r['spans']):
            out.append(html.escape(text[last:start]))
            out.append(f'<mark title="{kind}">{html.escape(text[start:end])}'
                       f'</mark>')
            last = end
        out.append(html.escape(text[last:]))
        parts.append(f'<p><b>{r["id"]}</b> ({r["split"]}): {"".join(out)}'
                     f'</p>')
    display(HTML(''.join(parts)))


def metrics_table(columns, thresholds=None):
    """A DataFrame of metrics, one column per named dict of values."""
    # memory: pandas only where a table is shown
    import pandas as pd
    df = pd.DataFrame(columns)
    if thresholds:
        df['threshold'] = [thresholds.get(k.split('/')[-1])
                           if k.startswith('forget/') else None
                           for k in df.index]
    return df.round(4).fillna('')


def before_after(before, after, keys, title='Before and after'):
    """A grouped bar chart of metrics before and after a method."""
    fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys)
    for i, k in enumerate(keys, start=1):
        fig.add_trace(go.Bar(x=['before', 'after'], y=[before[k], after[k]],
                             marker_color=['#4C78A8', '#E45756'],
                             showlegend=False), row=1, col=i)
    fig.update_layout(height=300, title=title,
                      margin=dict(t=70, b=30, l=40, r=10))
    return fig


def across_seeds(notebook, profile, directory=None, keys=()):
    """This notebook's claims across seeds, from its record of several
    seeds on `profile` (`python -m workbench run NOTEBOOK --seeds 0,1,2`,
    in the results folder `directory`): how many seeds each claim held in,
    each seed's evidence, and a dot a seed of each of `keys` before and
    after the method. Without such a record, one line saying how to write
    it. Returns the claims' table, or None."""
    # memory: as above
    import pandas as pd
    name = getattr(profile, 'name', profile)
    path = record.seeds_path(results_dir(directory or None), notebook)
    rec = record.load(path) if path.exists() else None
    if rec is None or rec.get('profile') != name:
        print(f'No record of several seeds on {name!r} here yet: '
              f'python -m workbench run {notebook} --profile {name} '
              f'--seeds 0,1,2 writes one ({path.name} in the results '
              f'folder), and this cell then shows it.')
        return None
    keys = [k for k in keys if k in rec['metrics']]
    if keys:
        fig = make_subplots(rows=1, cols=len(keys), subplot_titles=keys)
        for i, k in enumerate(keys, start=1):
            for side, colour in (('before', '#4C78A8'), ('after', '#E45756')):
                values = rec['metrics'][k].get(side, {}).get('values', [])
                fig.add_trace(go.Scatter(
                    x=[side] * len(values), y=values, mode='markers',
                    marker=dict(color=colour, size=9, opacity=0.7),
                    text=[f'seed {s}' for s in rec['seeds']],
                    showlegend=False), row=1, col=i)
        fig.update_layout(height=280, title=f'A dot a seed ({name})',
                          margin=dict(t=70, b=30, l=40, r=10))
        display(fig)
    return pd.DataFrame([
        {'claim': c['id'], 'holds in': f"{c['holds_in']} of {c['seeds']}",
         **{f'seed {s}': e for s, e in c['evidence'].items()}}
        for c in rec['claims']]).set_index('claim')


def show_completions(model, tokenizer, texts, prefix_tokens=8,
                     new_tokens=20):
    """What the model says after the first words of each text (greedy)."""
    # memory: as above
    import pandas as pd
    prefixes = [tokenizer(t)['input_ids'][:prefix_tokens] for t in texts]
    gens = greedy_continue(model, prefixes, [new_tokens] * len(texts),
                           tokenizer.pad_token_id)
    rows = []
    for t, p, g in zip(texts, prefixes, gens):
        rows.append({'prompt': tokenizer.decode(p),
                     'true text': tokenizer.decode(
                         tokenizer(t)['input_ids'][prefix_tokens:]
                         [:new_tokens]),
                     'model says': tokenizer.decode(g)})
    with pd.option_context('display.max_colwidth', None):
        display(pd.DataFrame(rows))


def show_tokens(tokenizer, input_ids, attention_mask, selected,
                reference=None, rows=2):
    """Display texts token by token: `selected` tokens highlighted, and
    tokens of `reference` (e.g. the true PII spans) underlined."""
    parts = []
    for b in range(min(rows, input_ids.shape[0])):
        out = []
        for t in range(int(attention_mask[b].sum())):
            s = html.escape(tokenizer.decode([int(input_ids[b, t])]))
            if reference is not None and reference[b, t]:
                s = f'<u>{s}</u>'
            if selected[b, t]:
                s = f'<mark>{s}</mark>'
            out.append(s)
        parts.append(f'<p>{"".join(out)}</p>')
    display(HTML('<p><mark>highlighted</mark>: selected; <u>underlined</u>: '
                 'true personal details</p>' + ''.join(parts)))
