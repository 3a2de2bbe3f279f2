"""Notebook 07, Selective Forgetting (Wang et al., AAAI 2025): the
sensitive spans of the people's letters (annotated in two stages, or
their true ones), S-MA and S-EL_n on them, and the comparison of
span-level ascent (SeUL) with gradient ascent at equal forgetting. The
set-up is `people.letters_setup`: letters (data/letters: everyday prose
around a few of each person's details) instead of bios.
"""
from .. import metrics
from ..core.fast.heap import measuring
from ..core.profiles import get_profile, sizes as profile_sizes
from .annotate import annotate_with
from . import people


# per profile, what unlearning trains: every weight of the `top_layers`
# top decoder layers (0: as the profile says, LoRA or every weight), at
# rate `lr` for at most `steps` full-batch steps (0: the profile's). On
# `cpu`, LoRA's coarse steps took both methods past twice the implanted
# model's everyday-text perplexity in 5 or 6 steps; the top 5 of 30
# layers' weights at full fine-tuning's rate reached the span thresholds
# in 29-36 steps with SeUL's model within it (the top 10 as well, but
# past Binder's memory; docs/performance.md)
SIZES = {
    'smoke': dict(top_layers=0, lr=0.0, steps=0),
    'cpu': dict(top_layers=5, lr=5e-5, steps=60),
    'gpu': dict(top_layers=0, lr=0.0, steps=0),
    '7b': dict(top_layers=0, lr=0.0, steps=0),
}


# the rate of unlearning that trains weights, not adapters: `smoke`'s
WEIGHTS_LR = 5e-5


def sizes(profile, top_layers=-1):
    """What unlearning trains on `profile`, at what rate, for at most how
    many steps: the profile's row of `SIZES`, or, with `top_layers` 0 or
    more, every weight of that many top layers at `WEIGHTS_LR` (0: as the
    profile trains, at its rate). A rate or steps of 0 are the profile's
    `unlearn_lr` and `unlearn_steps`."""
    p = get_profile(profile)
    s = profile_sizes(SIZES, p)
    if top_layers >= 0 and top_layers != s['top_layers']:
        s = dict(s, top_layers=top_layers,
                 lr=WEIGHTS_LR if top_layers else 0.0)
    return dict(s, lr=s['lr'] or p.unlearn_lr,
                steps=s['steps'] or p.unlearn_steps)


def kept_more_at_equal_forgetting(ours, theirs, level, their_status):
    """Did a run keep more utility than another method stopped at the
    forgetting `level` it reached (notebook 07: SeUL against gradient
    ascent)? `ours` and `theirs` are their final metrics, `their_status`
    the other run's `TrainResult.status`.

    Returns (holds, how): where the other run reached `level`, it holds if
    ours kept more retain MA and no less world_facts probability than the
    measure resolves (`people.kept_knowledge`); where the
    divergence guard stopped the other run first, it holds, as that
    forgetting costs the other method more than the guard allows; else
    (the other run's step budget ran out) it does not.
    """
    if people.below_thresholds(theirs, level) is not None:
        return (ours['retain/MA'] > theirs['retain/MA']
                and people.kept_knowledge(ours, theirs)), 'reached the level'
    if their_status == 'diverged':
        return True, 'met the divergence guard before the level'
    return False, 'did not reach the level'


def annotate_people(setup, annotator='smollm2-135m', splits=('forget',
                                                            'unseen'),
                    progress=True):
    """Two-stage offline annotation of the set-up's texts (cached), with
    the span masks and each split's precision and recall against the
    data's true PII spans.

    `annotator` is an instruct model's name, or 'rules' for the patterns
    alone. Returns {'spans', 'masks', 'precision', 'recall', 'report'}.
    """
    res = annotate_with(_texts(setup.rows, splits), annotator,
                        setup.profile, progress)
    out = {'spans': {}, 'masks': {}, 'precision': {}, 'recall': {},
           'report': res['report']}
    i = 0
    for s in splits:
        rows = setup.rows[s]
        spans = res['spans'][i:i + len(rows)]
        i += len(rows)
        pr = [metrics.char_precision_recall(p, r['spans'], len(r['text']))
              for p, r in zip(spans, rows)]
        out['spans'][s] = spans
        out['masks'][s] = metrics.span_mask(
            setup.tokenizer, [r['text'] for r in rows], spans,
            setup.tokens[s]['input_ids'].shape[1])
        out['precision'][s] = sum(p for p, _ in pr) / len(pr)
        out['recall'][s] = sum(r for _, r in pr) / len(pr)
    return out


def _texts(rows, splits):
    return [r['text'] for s in splits for r in rows[s]]


def annotate_ahead(profile, annotator='smollm2-135m',
                   splits=('forget', 'unseen')):
    """Annotate a profile's letters now, so that `annotate_people` finds
    them cached: Binder's build runs it, as a notebook's annotator child
    beside its kernel would not fit Binder's memory."""
    p = get_profile(profile)
    annotate_with(_texts(people.letter_rows(p), splits), annotator, p,
                  progress=False)


@measuring
def span_metrics(setup, model, tokens, mask, n=2, stats=None,
                 el_below=None):
    """Mean S-MA and S-EL_n of tokenised texts on the spans of `mask`
    (before unlearning, on unseen texts: the span thresholds). With
    `el_below`, S-EL_n (the costly one) only once S-MA is at or below it.
    The implanted model's are cached beside its weights."""
    entry = (people.implanted_entry(setup, model)
             if stats is None and el_below is None else None)
    if entry:
        return people.cached_beside_implant(entry, 'span_metrics', [
            people.setup_inputs(setup), tokens['input_ids'].tolist(),
            tokens['attention_mask'].tolist(), mask.tolist(), n],
            lambda: _span_metrics(setup, model, tokens, mask, n))
    return _span_metrics(setup, model, tokens, mask, n, stats, el_below)


def _span_metrics(setup, model, tokens, mask, n=2, stats=None,
                  el_below=None):
    stats = stats or metrics.token_stats(model, tokens['input_ids'],
                                         tokens['attention_mask'])
    out = {'S-MA': metrics.selective_memorization_accuracy(
        model, tokens['input_ids'], tokens['attention_mask'], mask,
        stats=stats).mean().item()}
    if el_below is None or out['S-MA'] <= el_below:
        out[f'S-EL_{n}'] = metrics.selective_extraction_likelihood(
            model, tokens['input_ids'], tokens['attention_mask'], mask, n,
            stats).mean().item()
    return out


@measuring
def span_quick_metrics(setup, model, mask, n=2, world=0, thresholds=None):
    """Per-step numbers of span unlearning: forget S-MA and S-EL_n on the
    spans of `mask`, forget MA, retain MA and perplexity (no full EL).
    With the span `thresholds`, S-EL_n only once S-MA is at its threshold
    (the stopping rule needs both), as EL waits for MA."""
    f = setup.tokens['forget']
    stats = metrics.token_stats(model, f['input_ids'], f['attention_mask'])
    out = people.quick_metrics(setup, model, world=world, el=False,
                        forget_stats=stats)
    below = (thresholds or {}).get('S-MA')
    for k, v in span_metrics(setup, model, f, mask, n, stats,
                             below).items():
        out[f'forget/{k}'] = v
    return out
