"""The story experiments of notebook 06 (Who's Harry Potter).

data/story is an original fictional universe with its anchored-terms
dictionary and familiarity prompts. The baseline (a LoRA adapter) is
trained on the story until it knows it; the reinforced model continues
from the baseline on the same text; the unlearned model starts as a copy
of the baseline and is fine-tuned on the generic labels.

Familiarity is judged from the anchored terms: a greedy completion of a
familiarity prompt counts as familiar when it names a term of the
dictionary (the story's own names, places and words) that the prompt did
not already give, which a model that never read the story has no reason
to produce. The paper asked GPT-4 to grade completions; the dictionary is
the transparent stand-in.
"""
import json
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import data

from .. import methods, metrics
from ..metrics.extraction import greedy_continue
from ..methods import whp
from ..core.paths import DATA_DIR
from ..core.profiles import get_profile
from ..core.profiles import sizes as profile_sizes
from ..core.roles import Roles

# per profile: chapters used, epochs of the baseline and of the
# reinforcement, tokens generated per familiarity prompt
# `smoke` reads the whole story too: on half of it (8 paragraphs) the
# notebook's 12 updates are six passes and the perplexity of everyday text
# doubled (1.46 times in 6 updates), where on the whole story it moved by
# 1-7 % in three seeds
SIZES = {
    'smoke': dict(chapters=8, epochs=6, reinforce=4, tokens=8),
    'cpu': dict(chapters=8, epochs=6, reinforce=4, tokens=8),
    'gpu': dict(chapters=8, epochs=6, reinforce=4, tokens=12),
    '7b': dict(chapters=8, epochs=6, reinforce=4, tokens=12),
}


def read(name):
    """Rows of one of data/story's JSONL files."""
    path = DATA_DIR / 'story' / f'{name}.jsonl'
    return [json.loads(line) for line in path.read_text().splitlines()
            if line.strip()]


@dataclass
class StorySetup:
    roles: Roles
    sizes: dict
    paragraphs: list  # {'chapter', 'text'}
    anchors: list
    prompts: list  # familiarity prompts of the chapters used
    world: list
    general: dict  # tokenised general texts
    pieces: list = field(default_factory=list)  # generic-label pieces

    @property
    def tokenizer(self):
        return self.roles.tokenizer

    @property
    def texts(self):
        return [p['text'] for p in self.paragraphs]


def setup(profile='smoke', progress=True, **sizes):
    """Train (or load) the baseline and the reinforced model on the
    chapters of data/story the profile uses."""
    p = get_profile(profile)
    s = profile_sizes(SIZES, p, **sizes)
    paragraphs = [r for r in read('story') if r['chapter'] <= s['chapters']]
    prompts = [r for r in read('familiarity')
               if r['chapter'] <= s['chapters']]
    return setup_from(p, paragraphs, read('anchors'), prompts, s, progress)


def setup_from(profile, paragraphs, anchors, prompts, sizes, progress=True,
               implant=True):
    """The same from any target: `paragraphs` ({'text', 'chapter'}),
    `anchors` ({'term', 'generic'}) and familiarity `prompts`. Without
    `implant` the baseline is the model as it is (a fresh adapter)."""
    roles = Roles(profile, progress)
    texts = [r['text'] for r in paragraphs]
    if implant:
        roles.fit('baseline', texts, sizes['epochs'],
                  desc='baseline (reads the story)')
    else:
        roles.add('baseline')
        roles.keys['baseline'] = 'untrained'
    roles.fit('reinforced', texts, sizes['reinforce'], start='baseline',
              desc='reinforced (reads it again)')
    general = data.tokenize(roles.tokenizer, data.everyday_texts())
    return StorySetup(roles, sizes, paragraphs, anchors, prompts,
                      data.world_facts(profile.n_world), general)


def _words(text):
    """The words of a text, lower-cased, without one-letter pieces such as
    the s of "Tamsin's"."""
    return {w for w in re.findall(r'\w+', text.lower()) if len(w) > 1}


def mentions(text, anchors, prompt=''):
    """The anchored terms a text names (case-insensitive), leaving out
    terms that share a word with `prompt` (repeating "Tamsin" after a
    prompt about Tamsin's grandmother shows no knowledge of the story)."""
    given = _words(prompt)
    return sorted({a['term'] for a in anchors
                   if re.search(r'(?<!\w)' + re.escape(a['term'].lower())
                                + r'(?!\w)', text.lower())
                   and not _words(a['term']) & given})


def completions(setup, model, prompts=None):
    """Greedy completions of the familiarity prompts."""
    prompts = prompts or setup.prompts
    tok = setup.tokenizer
    ids = [tok(p['prompt'])['input_ids'] for p in prompts]
    gens = greedy_continue(model, ids, [setup.sizes['tokens']] * len(ids),
                           tok.pad_token_id)
    return [tok.decode(g, skip_special_tokens=True) for g in gens]


def familiarity(setup, model, prompts=None):
    """Share of completions that name an anchored term the prompt did not
    give, and the completions."""
    prompts = prompts or setup.prompts
    texts = completions(setup, model, prompts)
    hits = [bool(mentions(t, setup.anchors, p['prompt']))
            for t, p in zip(texts, prompts)]
    return float(np.mean(hits)), texts


@torch.no_grad()
def next_token_probability(setup, model, key='story'):
    """Mean probability of the first token of each prompt's `key`
    continuation ('story' or 'generic')."""
    tok = setup.tokenizer
    device = next(model.parameters()).device
    probs = []
    for p in setup.prompts:
        ids = tok(p['prompt'])['input_ids']
        first = tok(p['prompt'] + p[key])['input_ids'][len(ids)]
        logits = model(input_ids=torch.tensor([ids], device=device)).logits
        probs.append(torch.softmax(logits[0, -1].float(), -1)[first].item())
    return float(np.mean(probs))


def quick(setup, model):
    """Per-step numbers: familiarity and next-token probability."""
    if not setup.prompts:
        return {}
    return {'target/familiarity': familiarity(setup, model)[0],
            'target/next_token_probability': next_token_probability(
                setup, model)}


def measure(setup, role, world=True):
    """Familiarity (completions and next token), the generic
    continuation's probability, perplexity on general text and on the
    story, world_facts accuracy; plus the completions."""
    out, texts = {}, []
    with setup.roles.active(role) as m:
        if setup.prompts:
            out['target/familiarity'], texts = familiarity(setup, m)
            out['target/next_token_probability'] = next_token_probability(
                setup, m)
            out['target/generic_probability'] = next_token_probability(
                setup, m, 'generic')
        g = setup.general
        out['retain/perplexity'] = metrics.perplexity(
            m, g['input_ids'], g['attention_mask'])
        s = data.tokenize(setup.tokenizer, setup.texts)
        out['target/perplexity'] = metrics.perplexity(
            m, s['input_ids'], s['attention_mask'])
        if world:
            out.update(metrics.world_facts_metrics(m, setup.tokenizer,
                                                   setup.world))
    return out, texts


def pieces(setup):
    """The generic-label pieces of every paragraph (`whp.generic_pieces`),
    made on first use: three forward passes a paragraph, whatever alpha."""
    if not setup.pieces:
        setup.pieces = whp.generic_pieces(
            setup.roles, 'baseline', 'reinforced', setup.texts,
            setup.anchors)
    return setup.pieces


def labels(setup, alpha, exclude_anchored=True):
    """Generic labels of every paragraph for `alpha` (the three forward
    passes run once; other alphas reuse them)."""
    excluded = whp.anchor_starts(setup.tokenizer, setup.anchors) \
        if exclude_anchored else ()
    return [whp.labels_from(*piece, alpha, excluded)
            for piece in pieces(setup)]


def label_stats(setup, alphas, exclude_anchored=True):
    """For each alpha: share of labelled positions where the argmax of the
    generic logits starts an anchored term (before any exclusion), and for
    the labels used, the share that are the story's own next token and
    the base model's mean log-probability of them on the original text (a
    measure of how fluent they are)."""
    starts = set(whp.anchor_starts(setup.tokenizer, setup.anchors))
    rows, logps, made = [], [], pieces(setup)
    with setup.roles.active(None) as m, torch.no_grad():
        device = next(m.parameters()).device
        for ids, t_idx, *_ in made:
            x = torch.tensor([ids], device=device)
            logps.append(torch.log_softmax(m(input_ids=x).logits[0].float(),
                                           -1)[t_idx.to(device)].cpu())
    for alpha in alphas:
        used = labels(setup, alpha, exclude_anchored)
        same = story = total = 0
        lp = 0.0
        for piece, (_, lab), base_lp in zip(made, used, logps):
            ids, t_idx = piece[:2]
            top = whp.labels_from(*piece, alpha)[1][t_idx + 1]
            lab = lab[t_idx + 1]
            same += (lab == torch.tensor(ids)[t_idx + 1]).sum().item()
            story += sum(int(x) in starts for x in top.tolist())
            lp += base_lp.gather(1, lab[:, None]).sum().item()
            total += len(lab)
        rows.append({'alpha': alpha, 'label = story token': same / total,
                     'argmax starts an anchored term': story / total,
                     'base log-prob of labels': lp / total})
    return rows


def unlearn(setup, config, callbacks=(), progress=True, name='unlearned',
            eval_every=5):
    """Fine-tune a copy of the baseline (role `name`) on the generic
    labels for `config.alpha`."""
    items = labels(setup, config.alpha, config.exclude_anchored)
    model = setup.roles.copy('baseline', name)
    task = methods.Task(forget=None, tokenizer=setup.tokenizer,
                        roles=setup.roles, original='baseline',
                        labelled=items)
    return methods.run(whp, model, task, config, callbacks=callbacks,
                       evaluate=lambda m: quick(setup, m),
                       eval_every=eval_every, progress=progress)


def relearn(setup, role, steps=5, lr=None, name='relearn'):
    """The relearning probe: fine-tune a copy of `role` (None: the bare
    base model, which never read the story) for `steps` updates on the
    first half of the chapters, then measure familiarity on prompts about
    the other half. Returns (familiarity before, after)."""
    half = setup.sizes['chapters'] // 2
    first = [p['text'] for p in setup.paragraphs if p['chapter'] <= half]
    later = [p for p in setup.prompts if p['chapter'] > half]
    roles = setup.roles
    with roles.active(role) as m:
        before = familiarity(setup, m, later)[0]
    model = roles.finetune(role, name, first, steps, lr)
    after = familiarity(setup, model, later)[0]
    roles.drop(name)
    return before, after
