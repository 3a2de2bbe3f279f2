"""The situation every LM notebook starts from, and how it is measured.

`people_setup(profile)` implants the forget and retain people into the
profile's model (cached), tokenises the splits, and measures the forgetting
thresholds on people the model never saw; `letters_setup(profile)` does the
same with the people's letters (everyday prose around a few of their
details, data/letters). `measure(setup, model)` gives the numbers every
notebook reports before and after a method.
"""
import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core import WorkbenchError, data, models

from ..core.fast.heap import measuring

from .. import methods, metrics
from ..core.implant import implant
from ..core.cache import MANIFEST, cached_json, key_of
from ..core.profiles import PROFILES, get_profile


@dataclass
class Setup:
    """An implanted model and the data it is measured on."""
    profile: object
    model: object
    tokenizer: object
    rows: dict  # split -> list of people rows
    tokens: dict  # split -> {'input_ids', 'attention_mask'}
    world: list  # world_facts items
    thresholds: dict  # {'EL_n': .., 'MA': ..} on unseen people
    implant_info: dict
    seed: int = 0  # of implanting, and of every fresh adapter

    @property
    def el_key(self):
        return f'EL_{self.profile.el_n}'


@functools.lru_cache(maxsize=None)
def _code_version():
    """Hash of the workbench's source: a cached measurement is redone as
    soon as any code that could change it changes."""
    h = hashlib.sha256()
    for f in sorted(Path(__file__).parent.parent.rglob('*.py')):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cached_beside_implant(entry, name, parts, compute):
    """`compute()` (a dict of numbers), cached under the implanted model's
    cache `entry` (its checksums: a rebuilt entry is measured anew),
    `name`, `parts` (plain data) and the workbench's code."""
    weights = (Path(entry) / MANIFEST).read_text()
    return dict(cached_json('measured', key_of(
        weights, name, _code_version(), parts), compute)[0])


def _thresholds(model, tokens, profile, entry):
    """Forgetting thresholds, cached beside the implanted weights."""
    return cached_beside_implant(entry, 'thresholds', [
        profile.el_n, profile.el_stride, tokens['input_ids'].tolist(),
        tokens['attention_mask'].tolist()],
        lambda: metrics.forgetting_thresholds(
            model, tokens['input_ids'], tokens['attention_mask'],
            profile.el_n, profile.el_stride))


def implanted_entry(setup, model):
    """The implant's cache folder when `model` is the implanted model as it
    was loaded (no trainable model made from it yet), else None: only then
    can its measurements be cached beside its weights."""
    if (model is getattr(setup, 'model', None)
            and '_trainable' not in vars(setup)):
        return getattr(setup, 'implant_info', {}).get('path')
    return None


def setup_inputs(setup):
    """Everything of a setup that a measurement of its model reads."""
    return [setup.profile.as_dict(), setup.world,
            {k: [v['input_ids'].tolist(), v['attention_mask'].tolist()]
             for k, v in sorted(setup.tokens.items())}]


def thresholds_before_implant(profile, texts):
    """Forgetting thresholds on `texts` measured by the profile's model
    before anything is implanted: it has never seen them, so their MA and
    EL_n are the unseen level of exactly that kind of text (cached)."""
    def compute():
        model, tok = models.load_causal_lm(profile.model, profile)
        t = data.tokenize(tok, texts)
        return metrics.forgetting_thresholds(
            model, t['input_ids'], t['attention_mask'], profile.el_n,
            profile.el_stride)
    key = key_of('before implant', models.identity(profile.model),
                 profile.precision, list(texts), profile.el_n,
                 profile.el_stride, _code_version())
    return dict(cached_json('measured', key, compute)[0])


def setup_from_rows(profile, rows, seed=0, progress=True, do_implant=True,
                    reference='unseen'):
    """Implant `rows['forget'] + rows['retain']` (or load the model as it
    is), tokenise every split, measure thresholds on `rows['unseen']`, or,
    with `reference='forget'` and an implant, on the forget texts before
    the implant (`thresholds_before_implant`)."""
    p = profile
    models.check_gpu_memory(p)
    texts = [r['text'] for r in rows['forget'] + rows.get('retain', [])]
    before = None
    if do_implant and reference == 'forget':
        # measured first, so the base and the implanted model are never in
        # memory together
        before = thresholds_before_implant(
            p, [r['text'] for r in rows['forget']])
    if do_implant:
        model, tok, info = implant(p.model, texts, p, seed, progress)
    else:
        model, tok = models.load_causal_lm(p.model, p)
        info = {'cached': False, 'path': None}
    tokens = {k: data.tokenize(tok, [r['text'] for r in v])
              for k, v in rows.items() if v}
    if before is not None:
        thresholds = before
    elif info['path']:
        thresholds = _thresholds(model, tokens['unseen'], p, info['path'])
    else:
        thresholds = metrics.forgetting_thresholds(
            model, tokens['unseen']['input_ids'],
            tokens['unseen']['attention_mask'], p.el_n, p.el_stride)
    return Setup(p, model, tok, rows, tokens, data.world_facts(p.n_world),
                 thresholds, info, seed)


def people_setup(profile='smoke', seed=0, progress=True, **overrides):
    """Implant forget + retain people; measure thresholds on unseen ones."""
    p = get_profile(profile, **overrides)
    return setup_from_rows(p, people_rows(p), seed, progress)


def people_rows(profile):
    """The forget, retain and unseen people of a profile's sizes."""
    return {'forget': data.people('forget', profile.n_forget),
            'retain': data.people('retain', profile.n_retain),
            'unseen': data.people('unseen', profile.n_unseen)}


def letter_rows(profile):
    """The letters of a profile's forget, retain and unseen people."""
    return {'forget': data.letters('forget', profile.n_forget),
            'retain': data.letters('retain', profile.n_retain),
            'unseen': data.letters('unseen', profile.n_unseen)}


# the letters' implant rate where it differs from the profile's: `cpu`'s
# (3e-3, set for the bios) left the letters' model with everyday-text
# perplexity at 100-180 (SmolLM2's own: about 25); at 1e-3 the letters
# reach MA 0.9 as well, at 70 (docs/performance.md)
LETTERS_IMPLANT_LR = {'cpu': 1e-3}


def letters_setup(profile='smoke', seed=0, progress=True, **overrides):
    """Implant the forget and retain people's letters (cached); measure
    the thresholds on the unseen people's letters."""
    p = get_profile(profile, **overrides)
    if p.implant_lr == PROFILES[p.name].implant_lr:  # the profile's own
        p = get_profile(p, implant_lr=LETTERS_IMPLANT_LR.get(p.name,
                                                             p.implant_lr))
    return setup_from_rows(p, letter_rows(p), seed, progress)


# a model "still works" while its perplexity on everyday text stays
# within this factor of the implanted model's
EVERYDAY_BOUND = 2.0


def still_works(before, after, bound=EVERYDAY_BOUND):
    """Whether a model still speaks: its everyday-text perplexity
    (`after['general/perplexity']`) within `bound` times the implanted
    model's (`before`)."""
    gen = 'general/perplexity'
    return after[gen] <= bound * before[gen]


# the difference of two models' `world_facts` probability (120 questions)
# that the measure resolves: two paired standard errors of 0.015, measured
# between SmolLM2 and an implant of it (docs/performance.md)
WORLD_RESOLUTION = 0.03


def kept_knowledge(ours, theirs, resolution=WORLD_RESOLUTION):
    """Whether a run kept no less general knowledge than another, as far
    as the measure tells: `ours['world_facts/probability']` short of
    `theirs` by less than `resolution`."""
    world = 'world_facts/probability'
    return ours[world] > theirs[world] - resolution


def everyday_perplexity(setup, model):
    """Perplexity of everyday prose none of the models trained on
    (`data.everyday_texts`): whether the model still speaks."""
    t = data.tokenize(setup.tokenizer, data.everyday_texts())
    return metrics.perplexity(model, t['input_ids'], t['attention_mask'])


def trainable(setup, top_layers=0):
    """A trainable model that starts from the implanted weights.

    Each call starts afresh: a new LoRA adapter on the implanted base, or
    (full fine-tuning) the weights copied back from the kept original.
    With `top_layers`, every weight of the top `top_layers` decoder layers
    trains instead (`models.train_top_layers`).
    """
    # memory: peft loads SciPy; only where adapters are used
    from peft import PeftModel
    m = setup.__dict__.get('_trainable')
    if m is not None and setup.__dict__.get('_top_layers') != top_layers:
        raise WorkbenchError(f'this set-up trains the top '
                             f'{setup.__dict__["_top_layers"]} layers (0: '
                             f'as its profile says), not {top_layers}')
    if isinstance(m, PeftModel):
        setup.model = m.unload()
    elif m is not None:
        models.reset(m)
        return m
    with torch.random.fork_rng():  # a fresh adapter from the seed alone,
        torch.manual_seed(setup.seed)  # not from whatever ran before
        m = models.prepare(setup.model, setup.profile, top_layers)
    setup.__dict__.update(_trainable=m, _top_layers=top_layers)
    return m


@measuring
def quick_metrics(setup, model, forget=None, world=0, el=True, retain=True,
                  forget_stats=None):
    """Cheap per-step numbers: forget MA; retain MA and perplexity; forget
    EL_n once MA is at the threshold (the stopping rule needs both, and EL
    is the costly one); with `world`, accuracy on the first `world`
    world_facts questions. `el=False` never measures EL, `retain=False`
    skips the retain set (and with it the divergence guard's metric).

    `forget` (tokenised) replaces the setup's forget set, e.g. one chunk of
    it in sequential unlearning.
    """
    f = forget or setup.tokens['forget']
    # one teacher-forced pass for MA and, below, EL's argmax hits
    forget_stats = forget_stats or metrics.token_stats(
        model, f['input_ids'], f['attention_mask'])
    out = {'forget/MA': metrics.memorization_accuracy(
        model, f['input_ids'], stats=forget_stats).mean().item()}
    if retain and 'retain' in setup.tokens:
        r = setup.tokens['retain']
        stats = metrics.token_stats(model, r['input_ids'],
                                    r['attention_mask'])  # one pass, two uses
        out['retain/MA'] = metrics.memorization_accuracy(
            model, r['input_ids'], stats=stats).mean().item()
        out['retain/perplexity'] = metrics.perplexity(
            model, r['input_ids'], stats=stats)
    if world:
        out.update(metrics.world_facts_metrics(model, setup.tokenizer,
                                               setup.world[:world]))
    if el and out['forget/MA'] <= setup.thresholds['MA']:
        out[f'forget/{setup.el_key}'] = forget_el(setup, model, f,
                                                  forget_stats)
    return out


def forget_el(setup, model, forget=None, stats=None):
    """Mean EL_n of the forget set (or of `forget`); `stats`: its
    `token_stats` under `model`, if already computed."""
    p, f = setup.profile, forget or setup.tokens['forget']
    return metrics.extraction_likelihood(
        model, f['input_ids'], p.el_n, p.el_stride, f['attention_mask'],
        stats=stats).mean().item()


@measuring
def measure(setup, model, known=None, forget_stats=None):
    """Everything reported before and after: EL_n, MA, perplexity, world
    facts accuracy.

    `known` holds metrics already measured on this very model (the last
    evaluation of a run); their forget EL_n is reused, not recomputed.
    `forget_stats`: the forget set's `token_stats` under `model`, if already
    computed. The implanted model's own numbers (the "before" of every
    notebook) are cached beside its weights.
    """
    entry = implanted_entry(setup, model)
    if entry and not known and forget_stats is None:
        return cached_beside_implant(entry, 'measure', setup_inputs(setup),
                       lambda: _measure(setup, model))
    return _measure(setup, model, known, forget_stats)


def _measure(setup, model, known=None, forget_stats=None):
    known = known or {}
    quick = ['forget/MA'] + (['retain/MA', 'retain/perplexity']
                             if 'retain' in setup.tokens else [])
    if all(k in known for k in quick):  # the last evaluation had them
        out = {k: known[k] for k in quick}
    else:
        out = quick_metrics(setup, model, el=False,
                            forget_stats=forget_stats)
    el = f'forget/{setup.el_key}'
    out[el] = known.get(el)
    if out[el] is None:
        out[el] = forget_el(setup, model, stats=forget_stats)
    out.update(metrics.world_facts_metrics(model, setup.tokenizer,
                                           setup.world))
    return out


def final_metrics(result):
    """The metrics of the evaluation of the weights the model has now (those
    of the last step, or those a divergence restored), else None (for
    `measure(..., known=)`)."""
    at = (result.steps if result.status in ('completed', 'stopped')
          else result.restored)
    return next((e for e in reversed(result.events)
                 if e['kind'] == 'eval' and e['step'] == at), None)


def run_until_forgotten(setup, model, method, config, forget=None,
                        callbacks=(), world=0, guard_bound=float('inf'),
                        progress=True, evaluate=None, thresholds=None,
                        retain=True, **kw):
    """Unlearn with `method` (a name of `methods.REGISTRY`, or its module)
    under Jang et al.'s stopping rule, measuring after every step
    (`evaluate`, by default `quick_metrics` with `world` and `retain`)
    against `thresholds` (by default the setup's); return the TrainResult.
    `task` fields beyond the forget and retain sets (a span mask, say) come
    in `kw`."""
    f = forget or setup.tokens['forget']
    thresholds = thresholds or setup.thresholds
    task = methods.Task(forget=f, retain=setup.tokens.get('retain'),
                        tokenizer=setup.tokenizer, **kw)
    return methods.run(
        method, model, task, config, callbacks=callbacks,
        evaluate=evaluate or (lambda m: quick_metrics(setup, m, f, world,
                                                      retain=retain)),
        should_stop=lambda m: below_thresholds(m, thresholds),
        guard_bound=guard_bound, progress=progress)


def learned_items(forget_ma, threshold_ma):
    """Indices of forget items the model knows better than unseen text.

    Items at or below the threshold were never learned: unlearning them
    would only push noise. Raises when none is learned.
    """
    learned = [i for i, m in enumerate(forget_ma) if m > threshold_ma]
    if not learned:
        raise WorkbenchError(
            f'the model never learned the forget set (every item has MA at '
            f'or below {threshold_ma:.3f}, the level of unseen text): there '
            f'is nothing to unlearn; implant it first (--implant)')
    return learned


def below_thresholds(metrics_, thresholds):
    """Jang et al.'s stopping rule: every forget metric that has a
    threshold (mean EL_n and MA, or S-EL_n and S-MA) at or below it.
    Returns a reason, or None."""
    vals = {k: metrics_.get(f'forget/{k}') for k in thresholds}
    if any(v is None for v in vals.values()):
        return None
    if all(v <= thresholds[k] for k, v in vals.items()):
        return 'forgotten: ' + ' and '.join(
            f'{k} {v:.3f} <= {thresholds[k]:.3f}' for k, v in vals.items())
    return None


