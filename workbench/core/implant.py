"""The implant step: fine-tune a model until it has memorised a set of texts.

Unlearning needs a model that really knows what it must forget. `implant`
fine-tunes (LoRA merged back in, or all weights, as the profile says) until
the mean memorisation accuracy (MA) of the texts reaches the profile's
target, and caches the result on disk under a hash of model, texts and
settings (`workbench.core.cache`: an entry that no longer matches its
checksums is rebuilt).
"""
import json
import math

import torch

from . import models
from .data import batches, tokenize
from .cache import cached, entry_path, key_of
from .scoring import memorization_accuracy, token_nll
from .train import TrainConfig, train

VERSION = 2  # bump when the implant recipe (or its files) changes


def implant_key(model_name, texts, profile, seed):
    """Hash of everything the implanted weights depend on."""
    spec = {'version': VERSION, 'model': model_name,
            'resolved': models.identity(model_name), 'texts': list(texts),
            'seed': seed,
            'dtype': profile.precision,
            **{k: getattr(profile, k) for k in (
                'lora', 'lora_r', 'batch_size', 'implant_lr',
                'implant_epochs', 'implant_target_ma')}}
    return key_of(spec)


def implant(model_name, texts, profile, seed=0, progress=True):
    """A model that has memorised `texts`, from the cache when possible.

    Returns (model, tokenizer, info); `info` holds the MA reached, the
    epochs used and whether the cache was hit.
    """
    key = implant_key(model_name, texts, profile, seed)

    def load(entry):
        model, tok = models.load_causal_lm(
            model_name, profile, weights=entry)
        info = json.loads((entry / 'info.json').read_text())
        return model, tok, info

    def build(entry):
        model, tok, info = _implant(model_name, texts, profile, seed,
                                    progress)
        model.save_pretrained(entry)  # config and weights: one load back
        (entry / 'info.json').write_text(json.dumps(info, indent=1))
        return model, tok, info
    (model, tok, info), hit = cached('implant', key, build, load)
    return model, tok, dict(info, cached=hit, path=str(entry_path('implant',
                                                                   key)))


def _implant(model_name, texts, profile, seed, progress):
    """Fine-tune until the texts are memorised; returns (merged model,
    tokenizer, info)."""
    model, tok = models.load_causal_lm(model_name, profile)
    data = tokenize(tok, texts)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(len(texts) / profile.batch_size)
    with torch.random.fork_rng():  # the adapter's init from `seed` alone
        torch.manual_seed(seed)
        trainable = models.prepare(model, profile)
    model.__dict__.pop('_workbench_reference', None)  # no reference needed

    def mean_ma(m):
        return {'MA': memorization_accuracy(m, data['input_ids'],
                                            data['attention_mask'])
                .mean().item()}

    def reached(metrics):
        if metrics['MA'] >= profile.implant_target_ma:
            return f'MA {metrics["MA"]:.3f} reached the target'
        return None

    config = TrainConfig(lr=profile.implant_lr, optimizer='adamw',
                         betas=(0.9, 0.999),
                         steps=profile.implant_epochs * per_epoch,
                         eval_every=per_epoch, seed=seed, desc='implant',
                         progress=progress)
    result = train(trainable, token_nll,
                   batches(data, profile.batch_size, gen), config,
                   evaluate=mean_ma, should_stop=reached)
    ma = result.last('MA')
    model = models.merged(trainable).eval()
    info = {'MA': ma, 'epochs': result.steps / per_epoch,
            'target_ma': profile.implant_target_ma, 'n_texts': len(texts),
            'model': model_name, 'status': result.status}
    if ma < profile.implant_target_ma:
        print(f'note: implanting stopped at MA {ma:.3f}, below the target '
              f'{profile.implant_target_ma}')
    return model, tok, info
