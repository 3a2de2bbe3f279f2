"""The toxicity-classification experiments of notebook 01 (FairSISA).

`setup(profile)` loads data/toxicity and builds the shard learner the
profile asks for: on `smoke` and `cpu` a logistic-regression head on frozen
MiniLM embeddings (fast), on `gpu` and `7b` LoRA fine-tuning of the
profile's classifier backbone (at 7B, one adapter per shard on the 7B
model); `mode=` picks either anywhere. `evaluate` runs a
trained SISA ensemble through the vote and the three FairSISA variants.
"""
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import WorkbenchError
from ..methods import fairsisa
from ..metrics.fairness import fairness_report
from ..methods.sisa import SISA, FinetuneLearner, HeadLearner, SISAConfig
from ..core import data
from ..core.models import check_gpu_memory
from ..core.profiles import sizes as profile_sizes
from ..methods.sisa import embed, load_classifier

TOPICS = ('sexual_orientation', 'religion', 'race', 'gender', 'age',
          'disability')

# per profile: how shard models train by default (`mode`: a head on cached
# embeddings, 'fast', or LoRA fine-tuning, 'finetune'), the training of each
# mode, and the fine-tuned backbone (the profile's encoder, or at 7B its
# causal LM)
_HEAD = dict(lr=3e-2, epochs=10, batch_size=32)
SIZES = {
    'smoke': dict(mode='fast', fast=_HEAD, backbone='encoder',
                  finetune=dict(lr=1e-3, epochs=2, batch_size=32)),
    'cpu': dict(mode='fast', fast=_HEAD, backbone='encoder',
                finetune=dict(lr=1e-3, epochs=2, batch_size=32)),
    'gpu': dict(mode='finetune', fast=_HEAD, backbone='encoder',
                finetune=dict(lr=5e-4, epochs=2, batch_size=32)),
    '7b': dict(mode='finetune', fast=_HEAD, backbone='model',
               finetune=dict(lr=2e-4, epochs=2, batch_size=16)),
}


@dataclass
class FairSISARun:
    """What the notebook's panel varies: SISA's shape, the sensitive group,
    the post-processing."""
    shards: int = field(default=4, metadata={
        'min': 1, 'max': 12, 'help': 'S: shards (one model each)'})
    slices: int = field(default=2, metadata={
        'min': 1, 'max': 6, 'help': 'R: slices per shard'})
    group: str = field(default='sexual_orientation', metadata={
        'choices': TOPICS, 'help': 'A = 1 for texts on this topic'})
    variant: str = field(default='joint', metadata={
        'choices': fairsisa.VARIANTS, 'help': 'FairSISA variant'})
    c_fp: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'cost of a false positive'})
    c_fn: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'cost of a false negative'})


@dataclass
class ToxicitySetup:
    """The data, its splits (row positions) and the shard learner."""
    rows: list
    labels: np.ndarray
    topics: np.ndarray
    split: dict  # 'train' | 'val' | 'test' -> positions
    learner: object
    mode: str
    training: dict
    profile: object = None

    def sisa_config(self, shards, slices, seed=0, epochs=None):
        """A SISA config with this setup's training hyperparameters."""
        t = self.training
        epochs = epochs or max(t['epochs'], (slices + 2) // 2)
        return SISAConfig(shards=shards, slices=slices, epochs=epochs,
                          lr=t['lr'], batch_size=t['batch_size'], seed=seed)

    def groups(self, topic):
        """A = 1 where the text mentions `topic`, else 0."""
        if topic not in TOPICS:
            raise WorkbenchError(f'unknown group {topic!r}; choose one of '
                                 f'{", ".join(TOPICS)}')
        return (self.topics == topic).astype(int)


def setup(profile, mode=None, progress=True, rows=None):
    """Load data/toxicity (or `rows`: dicts with text, label, topic and
    split) and the shard learner for `profile`."""
    sizes = profile_sizes(SIZES, profile)
    mode = mode or sizes['mode']
    if mode not in ('fast', 'finetune'):
        raise WorkbenchError(f"mode must be 'fast' or 'finetune', got "
                             f"{mode!r}")
    training = dict(sizes[mode])
    rows = data.toxicity() if rows is None else list(rows)
    missing = {'text', 'label', 'topic', 'split'} - set(rows[0] if rows
                                                         else ())
    if missing:
        raise WorkbenchError(f'toxicity rows need the fields '
                             f'{sorted(missing)}')
    labels = np.array([r['label'] for r in rows])
    topics = np.array([r['topic'] for r in rows])
    names = np.array([r['split'] for r in rows])
    split = {s: np.flatnonzero(names == s) for s in ('train', 'val', 'test')}
    texts = [r['text'] for r in rows]
    if mode == 'fast':
        learner = HeadLearner(embed(texts, profile.encoder,
                                    progress=progress), labels)
    elif mode == 'finetune':
        check_gpu_memory(profile)  # before loading anything
        name = getattr(profile, sizes['backbone'])
        dtype = getattr(torch, profile.precision)
        model, tok = load_classifier(name, lora_r=8, dtype=dtype,
                                     gradient_checkpointing=(
                                         profile.gradient_checkpointing))
        if profile.device == 'cuda':
            model.to('cuda')
        learner = FinetuneLearner(model, tok, texts, labels)
    return ToxicitySetup(rows=rows, labels=labels, topics=topics,
                         split=split, learner=learner, mode=mode,
                         training=training, profile=profile)


def train(setup, shards, slices, seed=0, callback=None, progress=True):
    """A SISA ensemble on the training split, trained."""
    config = setup.sisa_config(shards, slices, seed)
    return SISA(setup.learner, setup.split['train'], config).fit(
        callback=callback, progress=progress)


def evaluate(setup, model, group, c_fp=1.0, c_fn=1.0, votes=None):
    """The vote and every FairSISA variant on test, fitted on val.

    Returns {'MV': report, variant: report, ...} where each report is
    `metrics.fairness.fairness_report` plus, for the variants, the LP's
    cost on val ('val_cost'), its val EOD and the seconds the fit took.
    """
    a = setup.groups(group)
    val, test = setup.split['val'], setup.split['test']
    if votes is None:
        votes = {'val': model.votes(val), 'test': model.votes(test)}
    y = setup.labels
    out = {'MV': fairness_report(y[test],
                                 fairsisa.majority_vote(votes['test']),
                                 a[test])}
    for variant in fairsisa.VARIANTS:
        start = time.perf_counter()
        fair = fairsisa.FairEnsemble(fairsisa.FairSISAConfig(
            variant=variant, c_fp=c_fp, c_fn=c_fn)).fit(
                votes['val'], y[val], a[val])
        seconds = time.perf_counter() - start
        report = fairness_report(y[test], fair.proba(votes['test'], a[test]),
                                 a[test])
        on_val = fairness_report(y[val], fair.proba(votes['val'], a[val]),
                                 a[val])
        report.update(val_eod=on_val['equalized_odds_difference'],
                      val_error=1 - on_val['accuracy'], fit_seconds=seconds)
        out[variant] = report
    return out


def shard_sweep(setup, shards, slices, group, seeds=(0,), progress=True):
    """EOD and accuracy of the vote and of each variant, per S and seed."""
    rows = []
    for s in tqdm(list(shards), desc='shards', disable=not progress):
        for seed in seeds:
            model = train(setup, s, slices, seed, progress=False)
            for name, rep in evaluate(setup, model, group).items():
                rows.append({'shards': s, 'seed': seed, 'predictor': name,
                             'accuracy': rep['accuracy'],
                             'equalized_odds_difference':
                                 rep['equalized_odds_difference']})
    # memory: pandas only where a table is made
    import pandas as pd
    return pd.DataFrame(rows)
