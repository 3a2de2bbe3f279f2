"""The situation every LM notebook starts from, and how it is measured.

`people_setup(profile)` implants the forget and retain people into the
profile's model (cached), tokenises the splits, and measures the forgetting
thresholds on people the model never saw. `measure(setup, model)` gives the
numbers every notebook reports before and after a method.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from . import data, metrics, models
from .implant import implant
from .profiles import get_profile


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

    @property
    def el_key(self):
        return f'EL_{self.profile.el_n}'


def _thresholds(model, tokens, profile, entry):
    """Forgetting thresholds, cached beside the implanted weights."""
    blob = json.dumps([profile.el_n, profile.el_stride,
                       tokens['input_ids'].tolist()]).encode()
    key = hashlib.sha256(blob).hexdigest()[:16]
    path = Path(entry) / 'thresholds.json'
    known = json.loads(path.read_text()) if path.exists() else {}
    if key not in known:
        known[key] = metrics.forgetting_thresholds(
            model, tokens['input_ids'], tokens['attention_mask'],
            profile.el_n, profile.el_stride, model.config.pad_token_id or 0)
        path.write_text(json.dumps(known))
    return known[key]


def setup_from_rows(profile, rows, seed=0, progress=True, do_implant=True):
    """Implant `rows['forget'] + rows['retain']` (or load the model as it
    is), tokenise every split, measure thresholds on `rows['unseen']`."""
    p = profile
    models.check_gpu_memory(p)
    texts = [r['text'] for r in rows['forget'] + rows.get('retain', [])]
    if do_implant:
        model, tok, info = implant(p.model, texts, p, seed, progress)
    else:
        model, tok = models.load_causal_lm(p.model, p)
        info = {'cached': False, 'path': None}
    tokens = {k: data.tokenize(tok, [r['text'] for r in v])
              for k, v in rows.items() if v}
    if info['path']:
        thresholds = _thresholds(model, tokens['unseen'], p, info['path'])
    else:
        thresholds = metrics.forgetting_thresholds(
            model, tokens['unseen']['input_ids'],
            tokens['unseen']['attention_mask'], p.el_n, p.el_stride,
            tok.pad_token_id)
    return Setup(p, model, tok, rows, tokens, data.world_facts(p.n_world),
                 thresholds, info)


def people_setup(profile='smoke', seed=0, progress=True, **overrides):
    """Implant forget + retain people; measure thresholds on unseen ones."""
    p = get_profile(profile, **overrides)
    rows = {'forget': data.people('forget', p.n_forget),
            'retain': data.people('retain', p.n_retain),
            'unseen': data.people('unseen', p.n_unseen)}
    return setup_from_rows(p, rows, seed, progress)


def trainable(setup):
    """A trainable model that starts from the implanted weights.

    Each call starts afresh: a new LoRA adapter on the implanted base, or
    (full fine-tuning) the weights copied back from the kept original.
    """
    from peft import PeftModel
    m = setup.__dict__.get('_trainable')
    if isinstance(m, PeftModel):
        setup.model = m.unload()
    elif m is not None:
        ref = m.__dict__['_workbench_reference']
        m.load_state_dict(ref.state_dict())
        return m
    m = models.prepare(setup.model, setup.profile)
    setup.__dict__['_trainable'] = m
    return m


def quick_metrics(setup, model):
    """Cheap per-step numbers: forget MA; retain MA and perplexity; and
    forget EL_n once MA is at the threshold (the stopping rule needs both,
    and EL is the costly one)."""
    f = setup.tokens['forget']
    out = {'forget/MA': metrics.memorization_accuracy(
        model, f['input_ids'], f['attention_mask']).mean().item()}
    if 'retain' in setup.tokens:
        r = setup.tokens['retain']
        stats = metrics.token_stats(model, r['input_ids'],
                                    r['attention_mask'])  # one pass, two uses
        out['retain/MA'] = metrics.memorization_accuracy(
            model, r['input_ids'], stats=stats).mean().item()
        out['retain/perplexity'] = metrics.perplexity(
            model, r['input_ids'], stats=stats)
    if out['forget/MA'] <= setup.thresholds['MA']:
        out[f'forget/{setup.el_key}'] = forget_el(setup, model)
    return out


def forget_el(setup, model):
    """Mean EL_n of the forget set."""
    p, f = setup.profile, setup.tokens['forget']
    return metrics.extraction_likelihood(
        model, f['input_ids'], p.el_n, p.el_stride, f['attention_mask'],
        setup.tokenizer.pad_token_id).mean().item()


def measure(setup, model):
    """Everything reported before and after: EL_n, MA, perplexity, world
    facts accuracy."""
    out = quick_metrics(setup, model)
    if f'forget/{setup.el_key}' not in out:
        out[f'forget/{setup.el_key}'] = forget_el(setup, model)
    out['world_facts/accuracy'] = metrics.multiple_choice_accuracy(
        model, setup.tokenizer, setup.world)
    return out


def below_thresholds(metrics_, thresholds, el_key):
    """Jang et al.'s stopping rule: mean EL and MA both at or below the
    unseen-data thresholds. Returns a reason, or None."""
    el, ma = metrics_.get(f'forget/{el_key}'), metrics_.get('forget/MA')
    if el is None or ma is None:
        return None
    if el <= thresholds[el_key] and ma <= thresholds['MA']:
        return (f'forgotten: {el_key} {el:.3f} <= {thresholds[el_key]:.3f} '
                f'and MA {ma:.3f} <= {thresholds["MA"]:.3f}')
    return None
