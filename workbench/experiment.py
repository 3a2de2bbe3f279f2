"""The situation every LM notebook starts from, and how it is measured.

`people_setup(profile)` implants the forget and retain people into the
profile's model (cached), tokenises the splits, and measures the forgetting
thresholds on people the model never saw. `measure(setup, model)` gives the
numbers every notebook reports before and after a method.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from . import data, metrics
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
    key = f'{profile.el_n}-{profile.el_stride}-{profile.n_unseen}'
    path = Path(entry) / 'thresholds.json'
    known = json.loads(path.read_text()) if path.exists() else {}
    if key not in known:
        known[key] = metrics.forgetting_thresholds(
            model, tokens['input_ids'], tokens['attention_mask'],
            profile.el_n, profile.el_stride, model.config.pad_token_id or 0)
        path.write_text(json.dumps(known))
    return known[key]


def people_setup(profile='smoke', seed=0, progress=True, **overrides):
    """Implant forget + retain people; measure thresholds on unseen ones."""
    p = get_profile(profile, **overrides)
    rows = {'forget': data.people('forget', p.n_forget),
            'retain': data.people('retain', p.n_retain),
            'unseen': data.people('unseen', p.n_unseen)}
    texts = [r['text'] for r in rows['forget'] + rows['retain']]
    model, tok, info = implant(p.model, texts, p, seed, progress)
    tokens = {k: data.tokenize(tok, [r['text'] for r in v])
              for k, v in rows.items()}
    thresholds = _thresholds(model, tokens['unseen'], p, info['path'])
    return Setup(p, model, tok, rows, tokens, data.world_facts(p.n_world),
                 thresholds, info)


def quick_metrics(setup, model):
    """Cheap per-step numbers: forget and retain MA, retain perplexity."""
    f, r = setup.tokens['forget'], setup.tokens['retain']
    return {
        'forget/MA': metrics.memorization_accuracy(
            model, f['input_ids'], f['attention_mask']).mean().item(),
        'retain/MA': metrics.memorization_accuracy(
            model, r['input_ids'], r['attention_mask']).mean().item(),
        'retain/perplexity': metrics.perplexity(
            model, r['input_ids'], r['attention_mask']),
    }


def measure(setup, model):
    """Everything reported before and after: EL_n, MA, perplexity, world
    facts accuracy."""
    p, f = setup.profile, setup.tokens['forget']
    out = quick_metrics(setup, model)
    out[f'forget/{setup.el_key}'] = metrics.extraction_likelihood(
        model, f['input_ids'], p.el_n, p.el_stride, f['attention_mask'],
        setup.tokenizer.pad_token_id).mean().item()
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
