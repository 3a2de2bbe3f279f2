"""The harmful-answer experiments of notebook 05 (Yao et al.).

data/harmful holds spiteful requests with an undesired and a desired
answer each, and normal everyday Q&A, in one template. The model to
unlearn ("original") is a LoRA adapter trained on undesired answers and
normal Q&A, so it answers spiteful requests spitefully, also ones it never
saw; unlearning works on a copy ("unlearned"); the original stays as the
KL reference, on the same base.

The harmful rate is judged by a proxy: a logistic-regression classifier
on frozen MiniLM sentence embeddings, trained on the data set's own
labels (undesired answers against desired and normal ones). Its accuracy
on held-out answers is reported beside every rate. An empty answer is
harmless (the paper counts whitespace outputs as harmless too).

The similarity of normal answers to the original model's is semantic, as
the paper's BLEURT is: the cosine of the same MiniLM sentence embeddings
(all-MiniLM-L6-v2 was trained for semantic textual similarity). ROUGE-L,
the lexical overlap, is reported beside it.
"""
from dataclasses import dataclass, field

import numpy as np
import torch

from ..core import WorkbenchError, data

from .. import methods, metrics
from ..metrics.qa import answer_perplexity, generate_answers, rouge_l_recall
from ..core.profiles import get_profile
from ..core.profiles import sizes as profile_sizes
from ..core.embed import sentence_embeddings
from ..core.roles import Roles
from ..core.models import load_encoder

# per profile: undesired pairs to unlearn (the seen prompts), unseen
# prompts measured, normal pairs, epochs of the original model, and the
# answer length generated
SIZES = {
    'smoke': dict(forget=24, unseen=16, normal=34, epochs=2, tokens=20),
    'cpu': dict(forget=48, unseen=32, normal=34, epochs=2, tokens=24),
    'gpu': dict(forget=112, unseen=32, normal=34, epochs=3, tokens=32),
    '7b': dict(forget=112, unseen=32, normal=34, epochs=3, tokens=32),
}


def rows(kind, split):
    """Rows of data/harmful of one kind ('forget', 'normal') and split."""
    out = [dict(r) for r in data.load('harmful')
           if r['kind'] == kind and r['split'] == split]
    if not out:
        raise WorkbenchError(f'no {kind} rows in split {split!r}')
    return out


class Judge:
    """Proxy harm judge: logistic regression on MiniLM embeddings."""

    def __init__(self, encoder='minilm', progress=False):
        # memory: scikit-learn (about 75 MB) only for the judge
        from sklearn.linear_model import LogisticRegression
        self.encoder, self.tokenizer = load_encoder(encoder)
        texts, labels = self._labelled(['train', 'val'])
        self.clf = LogisticRegression(max_iter=1000, C=10.0).fit(
            self._embed(texts), labels)
        texts, labels = self._labelled(['test'])
        self.accuracy = float((self.clf.predict(self._embed(texts))
                               == labels).mean())

    @staticmethod
    def _labelled(splits):
        texts, labels = [], []
        for s in splits:
            for r in rows('forget', s):
                texts += [r['answer'], r['safe_answer']]
                labels += [1, 0]
            for r in rows('normal', s):
                texts.append(r['answer'])
                labels.append(0)
        return texts, np.array(labels)

    def _embed(self, texts):
        return sentence_embeddings(self.encoder, self.tokenizer,
                                   texts).numpy()

    def similarity(self, a, b):
        """Cosine similarity of the sentence embeddings of each pair of
        texts `a[i]`, `b[i]` (0 where either is empty)."""
        out = np.zeros(len(a))
        idx = [i for i in range(len(a)) if a[i].strip() and b[i].strip()]
        if idx:
            ea = self._embed([a[i] for i in idx])
            eb = self._embed([b[i] for i in idx])
            out[idx] = (ea * eb).sum(1)
        return out

    def harmful(self, answers):
        """1 for each answer judged undesired, 0 otherwise (and for empty
        answers)."""
        out = np.zeros(len(answers), dtype=int)
        idx = [i for i, a in enumerate(answers) if a.strip()]
        if idx:
            out[idx] = self.clf.predict(self._embed([answers[i]
                                                     for i in idx]))
        return out


@dataclass
class HarmfulSetup:
    roles: Roles
    sizes: dict
    forget: list  # the undesired pairs unlearned (the seen prompts)
    unseen: list  # undesired-style prompts never trained on
    normal: list  # normal pairs for the random answers and the KL
    normal_test: list  # normal prompts for similarity
    judge: Judge
    world: list
    originals: dict = field(default_factory=dict)  # original's answers

    @property
    def profile(self):
        return self.roles.profile

    @property
    def tokenizer(self):
        return self.roles.tokenizer

    def reference(self, batch):
        """The original model's log-distributions on a batch (its role on
        the same base: no second copy of the weights)."""
        return self.roles.logprobs('original', batch)

    def original_answers(self, split):
        """The original model's greedy answers on a split (cached)."""
        if split not in self.originals:
            with self.roles.active('original') as m:
                self.originals[split] = answers(self, m, split)
        return self.originals[split]


def setup(profile='smoke', progress=True, **sizes):
    """The original model (trained, or from the cache) and the judge."""
    p = get_profile(profile)
    s = profile_sizes(SIZES, p, **sizes)
    forget = rows('forget', 'train')[:s['forget']]
    normal = rows('normal', 'train')[:s['normal']]
    roles = Roles(p, progress)
    # the normal pairs twice: once, and the original answers some normal
    # questions with pranks too
    texts = [data.qa_text(r['question'], r['answer'])
             for r in forget + normal * 2]
    roles.fit('original', texts, s['epochs'],
              desc='original (undesired + normal answers)')
    return HarmfulSetup(roles, s, forget, rows('forget', 'test')[
        :s['unseen']], normal, rows('normal', 'test'),
        Judge(p.encoder), data.world_facts(p.n_world))


def questions(setup, split):
    rows_of = {'forget': setup.forget, 'unseen': setup.unseen,
               'normal': setup.normal_test}
    return [r['question'] for r in rows_of[split]]


def answers(setup, model, split, limit=None):
    """Greedy answers of `model` to a split's prompts."""
    qs = questions(setup, split)[:limit]
    return generate_answers(model, setup.tokenizer, qs,
                            setup.sizes['tokens'])


def diversity(texts):
    """Mean share of distinct words in each non-empty output."""
    shares = [len(set(w)) / len(w) for w in (t.split() for t in texts) if w]
    return float(np.mean(shares)) if shares else 0.0


@torch.no_grad()
def fluency(setup, qs, texts):
    """Perplexity of generated answers under the original model (answer
    tokens given the prompt; empty answers left out)."""
    pairs = [(q, t) for q, t in zip(qs, texts) if t.strip()]
    if not pairs:
        return float('nan')
    with setup.roles.active('original') as m:
        return answer_perplexity(m, setup.tokenizer, *zip(*pairs))


@torch.no_grad()
def normal_perplexity(setup, model):
    """Perplexity of the normal test answers given their questions."""
    n = setup.normal_test
    return answer_perplexity(model, setup.tokenizer,
                             [r['question'] for r in n],
                             [r['answer'] for r in n])


def quick(setup, model, n=8):
    """Per-step numbers: harmful rate on the first `n` unseen prompts,
    perplexity of the normal test answers."""
    return {'unseen/harmful_rate': float(setup.judge.harmful(
        answers(setup, model, 'unseen', n)).mean()),
        'normal/perplexity': normal_perplexity(setup, model)}


def normal_similarity(setup, texts):
    """How close answers to the normal test questions are to the original
    model's: semantic similarity (MiniLM cosine) and ROUGE-L F1."""
    orig = setup.original_answers('normal')
    return {'normal/similarity': float(setup.judge.similarity(
        texts, orig).mean()), 'normal/rouge_l': float(rouge_l_recall(
            texts, orig, 'fmeasure').mean())}


def chance_similarity(setup):
    """The same two similarities between the original's normal answers and
    its answers to the other normal questions: unrelated answers in the
    same style, the floors for `normal/similarity` and `normal/rouge_l`."""
    a = setup.original_answers('normal')
    return normal_similarity(setup, a[1:] + a[:1])


def measure(setup, role, world=True):
    """Harmful rate (seen and unseen prompts), diversity and fluency of the
    answers, similarity of normal answers to the original's (semantic and
    lexical), perplexity of the normal test answers, world_facts accuracy;
    plus the answers."""
    tok, out, texts = setup.tokenizer, {}, {}
    with setup.roles.active(role) as m:
        for split in ('forget', 'unseen', 'normal'):
            texts[split] = answers(setup, m, split)
        out['normal/perplexity'] = normal_perplexity(setup, m)
        if world:
            out.update(metrics.world_facts_metrics(m, tok, setup.world))
    out['normal/harmful_rate'] = float(setup.judge.harmful(
        texts['normal']).mean())
    for split in ('forget', 'unseen'):
        t = texts[split]
        out[f'{split}/harmful_rate'] = float(setup.judge.harmful(t).mean())
        out[f'{split}/blank_rate'] = float(np.mean([not a.strip()
                                                    for a in t]))
        out[f'{split}/diversity'] = diversity(t)
        out[f'{split}/fluency_ppl'] = fluency(setup, questions(setup, split),
                                              t)
    out.update(normal_similarity(setup, texts['normal']))
    return out, texts


def unlearn(setup, config, callbacks=(), progress=True, name='unlearned',
            eval_every=5, guard=2.0):
    """Yao et al.'s update on a copy of the original (role `name`). The
    run stops and restores the last evaluated weights when the normal
    answers' perplexity passes `guard` times the original's (0: never)."""
    bound = float('inf')
    if guard:
        with setup.roles.active('original') as m:
            bound = guard * normal_perplexity(setup, m)
    model = setup.roles.copy('original', name)
    task = methods.Task(forget=None, tokenizer=setup.tokenizer,
                        roles=setup.roles, original='original',
                        forget_pairs=setup.forget, retain_pairs=setup.normal)
    return methods.run('llmu', model, task, config, callbacks=callbacks,
                       evaluate=lambda m: quick(setup, m),
                       eval_every=eval_every, progress=progress,
                       guard_key='normal/perplexity', guard_bound=bound)
