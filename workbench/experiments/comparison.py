"""Every LM method of the workbench on one forget set, against the
retrain oracle.

One base model holds every model as a LoRA role (`workbench.core.roles`):
`original` learned the Q&A pairs of the forget and retain people (TOFU's
setting, with the workbench's synthetic people); `retrained`, the oracle,
learned the retain people only. The forget set is the forget people's
Q&A pairs; the methods that unlearn tokens do so on the answers (TOFU's
convention), and every forget metric is taken on the answers too, each
answer closed by the end-of-sequence token as in OpenUnlearning. Each
method starts from a copy of `original` and gets the same budget: the
same number of updates, the same learning rate, the same stopping rule
(forget MA at the level of people the original never saw, Jang et al.'s
threshold) and the same divergence guard (retain perplexity). Every
model is then measured with OpenUnlearning's metrics, computed as its
code computes them (`DIFFERENCES` lists where the workbench's setting
differs from TOFU's), and probed for relearning.

The frozen models some methods need are roles too: the leave-one-out
teachers (one per partition of the people), KGA's A_f (the forget people)
and A_n (new people), WHP's reinforced model (`original` trained further
on the forget people), each trained the first time a method that needs it
runs.
"""
import time
from dataclasses import dataclass, field, fields
from functools import partial

import torch

from ..core import WorkbenchError, data

from .. import metrics
from .. import methods
from ..metrics.qa import (generate_answers, normalised_probability,
                          option_nlls, qa_batch, truth_ratio_probs)
from ..core.profiles import get_profile
from ..core.profiles import sizes as profile_sizes
from ..core.roles import Roles

METHODS = tuple(methods.REGISTRY)  # every registered LM method
_LABELS = {'ga': 'gradient ascent (03)', 'seul': 'SeUL (07)',
           'graddiff': 'GradDiff', 'npo': 'NPO', 'loo': 'leave-one-out (02)',
           'kga': 'KGA (04)', 'llmu': 'LLMU (05)', 'whp': "WHP (06)",
           'simnpo': 'SimNPO', 'rmu': 'RMU'}
LABELS = {m: _LABELS.get(m, m) for m in METHODS}
# what the comparison sets beyond the budget: SeUL on the personal details
# (the annotated spans), LLMU with 2 random answers per update, RMU at the
# middle of the layers the roles adapt (on CPU, those of the top third)
SETTINGS = {'seul': {'spans': 'annotated'}, 'llmu': {'random_answers': 2},
            'rmu': {'depth': 0.5}}
ANSWER_TOKENS = 24  # greedy answer length (the answers have 10-20 tokens)
MIA_ATTACKS = ('loss', 'zlib', 'min_k', 'min_k++', 'ref')
# where the comparison's measurement differs from OpenUnlearning's TOFU
# evaluation, on purpose; the notebook shows these and the record keeps them
DIFFERENCES = [
    'Model Utility is the harmonic mean of 6 numbers, not 9: the retain and '
    'world-facts probability, ROUGE-L recall and truth ratio; the workbench '
    'has no real-authors set.',
    f'Greedy answers (ROUGE) are at most {ANSWER_TOKENS} tokens long, not '
    '200: every answer here has fewer than 24.',
    "The prompt is the workbench's plain Q&A template, not a chat template.",
    "The reference attack's reference model is the retrained oracle.",
]
# people per split (4 Q&A pairs each); `utility_qa` retain pairs and
# `world` world_facts questions measure utility
SIZES = {
    'smoke': {'forget': 2, 'retain': 4, 'holdout': 4, 'new': 2,
              'teachers': 3, 'epochs': 8, 'reinforce': 2, 'utility_qa': 8,
              'world': 16},
    'cpu': {'forget': 4, 'retain': 8, 'holdout': 6, 'new': 4,
            'teachers': 4, 'epochs': 8, 'reinforce': 2, 'utility_qa': 16,
            'world': 40},
    'gpu': {'forget': 10, 'retain': 30, 'holdout': 10, 'new': 10,
            'teachers': 5, 'epochs': 6, 'reinforce': 2, 'utility_qa': 40,
            'world': 120},
    '7b': {'forget': 10, 'retain': 30, 'holdout': 10, 'new': 10,
           'teachers': 5, 'epochs': 6, 'reinforce': 2, 'utility_qa': 40,
           'world': 120},
}


@dataclass
class Budget:
    """What every method gets, and which methods run."""
    methods: tuple = field(default=METHODS, metadata={
        'choices': METHODS, 'help': 'methods to compare'})
    steps: int = field(default=10, metadata={
        'min': 1, 'max': 60, 'help': 'most updates of every method'})
    lr: float = field(default=1e-3, metadata={
        'min': 1e-5, 'max': 1e-2, 'log': True,
        'help': 'learning rate of every method (LoRA)'})
    relearn_steps: int = field(default=5, metadata={
        'min': 0, 'max': 20, 'help': 'updates of the relearning probe'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        unknown = set(self.methods) - set(METHODS)
        if not self.methods or unknown:
            raise WorkbenchError(f'choose methods among {", ".join(METHODS)}; '
                                 f'unknown: {sorted(unknown)}')
        if self.steps < 1 or not self.lr > 0 or self.relearn_steps < 0:
            raise WorkbenchError(f'the budget needs steps >= 1, lr > 0 and '
                                 f'relearn_steps >= 0, got {self}')


def person_texts(person, eos=''):
    """A person's Q&A pairs, as training texts, each ended by `eos` (the
    tokenizer's end-of-sequence token: OpenUnlearning's models learn to
    end an answer)."""
    return [data.qa_text(q['question'], q['answer']) + eos
            for q in person['qa']]


def pii_spans(text, person):
    """Character spans of `text` holding the person's personal details
    (every occurrence of each value of their bio's spans)."""
    out = []
    for start, end, kind in person['spans']:
        value = person['text'][start:end]
        i = text.find(value)
        while i >= 0:
            out.append((i, i + len(value)))
            i = text.find(value, i + 1)
    return sorted(out)


def detail_mask(tokenizer, people, batch):
    """(B, T) mask of the answer tokens of `batch` (from `qa_batch` on the
    people's Q&A pairs, in order) that hold a personal detail: SeUL's
    sensitive spans."""
    mask = torch.zeros_like(batch['target_mask'], dtype=torch.bool)
    rows = [(q, r) for r in people for q in r['qa']]
    for i, (q, person) in enumerate(rows):
        start = int(batch['target_mask'][i].nonzero()[0])
        answer = ' ' + q['answer']  # as `qa_batch` tokenises it
        spans = pii_spans(answer, person)
        offsets = tokenizer(answer, return_offsets_mapping=True,
                            add_special_tokens=False)['offset_mapping']
        for j, (a, b) in enumerate(offsets):
            if any(a < e and s < b for s, e in spans):
                mask[i, start + j] = True
    return mask


def anchors_for(forget, holdout):
    """WHP's anchored terms: each forget person's details, replaced by the
    same detail of a holdout person (a name for a name, a city for a
    city)."""
    out = []
    for i, person in enumerate(forget):
        other = holdout[i % len(holdout)]
        theirs = {kind: other['text'][s:e] for s, e, kind in other['spans']}
        for s, e, kind in person['spans']:
            if kind in theirs:
                out.append({'term': person['text'][s:e],
                            'generic': theirs[kind]})
    return out


@dataclass
class CompareSetup:
    """The trained roles and everything they are measured on."""
    roles: Roles
    sizes: dict
    people: dict  # split -> people rows
    texts: dict  # split -> training texts
    tokens: dict  # split -> tokenised Q&A pairs (`qa_batch`, with EOS)
    qa: dict  # split -> Q&A items
    world: list
    span_mask: torch.Tensor  # forget tokens holding personal details
    partitions: list  # leave-one-out teacher of each forget text
    teachers: list
    anchors: list
    thresholds: dict  # forget MA of people the original never saw
    guard_bound: float  # retain perplexity that stops a run
    # the oracle's token_stats of the forget and holdout answers (the
    # reference attack's)
    reference_stats: list = None
    results: dict = field(default_factory=dict)  # role -> measurement

    @property
    def tokenizer(self):
        return self.roles.tokenizer


def setup(profile='smoke', progress=True, **sizes):
    """Train (or load from the cache) the original and the oracle; the
    frozen roles of single methods follow when those run
    (`helper_roles`)."""
    p = get_profile(profile)
    s = profile_sizes(SIZES, p, **sizes)
    unseen = data.people('unseen', s['holdout'] + s['new'])
    people = {'forget': data.people('forget', s['forget']),
              'retain': data.people('retain', s['retain']),
              'holdout': unseen[:s['holdout']],
              'new': unseen[s['holdout']:]}
    roles = Roles(p, progress)
    tok = roles.tokenizer
    texts = {k: [t for r in v for t in person_texts(r, tok.eos_token)]
             for k, v in people.items()}
    qa = {k: [dict(q) for r in v for q in r['qa']]
          for k, v in people.items()}
    tokens = {k: qa_batch(tok, [q['question'] for q in v],
                          [q['answer'] for q in v], eos=True)
              for k, v in qa.items()}
    roles.fit('original', texts['forget'] + texts['retain'], s['epochs'],
              desc='original (forget + retain people)')
    roles.fit('retrained', texts['retain'], s['epochs'],
              desc='retrained oracle (retain people only)')
    # leave-one-out: the people dealt round-robin into disjoint partitions
    teachers = [f'teacher{j}' for j in range(s['teachers'])]
    partitions = [i % len(teachers) for i, r in enumerate(people['forget'])
                  for _ in r['qa']]
    span_mask = detail_mask(tok, people['forget'], tokens['forget'])
    with roles.active('original') as m:
        h = tokens['holdout']
        thresholds = {'MA': metrics.memorization_accuracy(
            m, h['input_ids'], h['attention_mask'],
            h['answer_mask']).mean().item()}
        r = tokens['retain']
        bound = 3 * metrics.perplexity(m, r['input_ids'], r['attention_mask'])
    with roles.active('retrained') as m:
        reference = [metrics.token_stats(m, d['input_ids'],
                                         d['attention_mask'])
                     for d in (tokens['forget'], tokens['holdout'])]
    return CompareSetup(roles, s, people, texts, tokens, qa,
                        data.world_facts(s['world']), span_mask, partitions,
                        teachers, anchors_for(people['forget'],
                                              people['holdout']),
                        thresholds, bound, reference)


def helper_roles(setup, method):
    """Train (or load from the cache) the frozen roles `method` needs, the
    first time it runs: the leave-one-out teachers, KGA's A_f and A_n,
    WHP's reinforced model. Returns their names."""
    roles, s, texts = setup.roles, setup.sizes, setup.texts
    if method == 'loo':
        everyone = setup.people['forget'] + setup.people['retain']
        todo = []
        for j, name in enumerate(setup.teachers):
            part = [t for i, r in enumerate(everyone)
                    if i % len(setup.teachers) == j
                    for t in person_texts(r, setup.tokenizer.eos_token)]
            todo.append((name, part, s['epochs'], None, f'teacher {j}'))
    elif method == 'kga':
        todo = [('A_f', texts['forget'], s['epochs'], None, 'KGA A_f'),
                ('A_n', texts['new'], s['epochs'], None, 'KGA A_n')]
    elif method == 'whp':
        todo = [('reinforced', texts['forget'], s['reinforce'], 'original',
                 'WHP reinforced')]
    else:
        return []
    for name, part, epochs, start, desc in todo:
        if name not in roles.names:
            roles.fit(name, part, epochs, start=start, desc=desc)
    return [t[0] for t in todo]


def step_metrics(setup, model):
    """Measured after every update of every method: forget MA on the
    answers (the stopping rule) and retain perplexity of the whole Q&A
    texts (the divergence guard)."""
    f, r = setup.tokens['forget'], setup.tokens['retain']
    stats = metrics.token_stats(model, r['input_ids'], r['attention_mask'])
    return {'forget/MA': metrics.memorization_accuracy(
                model, f['input_ids'], f['attention_mask'],
                f['answer_mask']).mean().item(),
            'retain/perplexity': metrics.perplexity(model, r['input_ids'],
                                                    stats=stats)}


def forgotten(setup, m):
    """The shared stopping rule: forget MA at the unseen people's level."""
    ma = m.get('forget/MA')
    if ma is not None and ma <= setup.thresholds['MA']:
        return f'forget MA {ma:.3f} <= {setup.thresholds["MA"]:.3f}'
    return None


def task(setup):
    """The one task every method unlearns: the forget people's Q&A pairs
    (their answers), with everything a method may lean on."""
    t = setup.tokens
    return methods.Task(
        forget=t['forget'], retain=t['retain'], tokenizer=setup.tokenizer,
        roles=setup.roles, original='original',
        forget_pairs=setup.qa['forget'], retain_pairs=setup.qa['retain'],
        new=t['new'], span_mask=setup.span_mask,
        partitions=setup.partitions, teachers=setup.teachers,
        forget_texts=setup.texts['forget'], anchors=setup.anchors)


def config_of(method, budget, micro_batch):
    """`method`'s config under the budget: its learning rate, updates and
    seed (and the profile's micro-batch, where it has one), the rest its
    defaults but for `SETTINGS`."""
    Config = methods.get(method).Config
    given = {'lr': budget.lr, 'steps': budget.steps, 'seed': budget.seed,
             'micro_batch': micro_batch, **SETTINGS.get(method, {})}
    names = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in given.items() if k in names})


def unlearn(setup, method, budget, callbacks=(), progress=True):
    """Run one method from a copy of `original` into the role named after
    it, with the budget's updates and learning rate; return the
    TrainResult."""
    helper_roles(setup, method)
    config = config_of(method, budget, setup.roles.profile.micro_batch)
    model = setup.roles.copy('original', method)
    return methods.run(method, model, task(setup), config,
                       callbacks=callbacks,
                       evaluate=partial(step_metrics, setup),
                       should_stop=partial(forgotten, setup),
                       guard_bound=setup.guard_bound, progress=progress)


def answer_metrics(model, batch):
    """Mean Extraction Strength and Exact Memorization (MA) of the answers
    of a `qa_batch` (their own tokens, not the EOS, as OpenUnlearning's
    per-token metrics read them), from one forward pass."""
    stats = metrics.token_stats(model, batch['input_ids'],
                                batch['attention_mask'])
    args = (model, batch['input_ids'], batch['attention_mask'],
            batch['answer_mask'])
    es = metrics.extraction_strength(*args, stats=stats)
    ma = metrics.memorization_accuracy(*args, stats=stats)
    return {'ES': es.mean().item(), 'MA': ma.mean().item()}


def qa_metrics(model, tokenizer, questions, answers, correct, wrong,
               normalised=False):
    """TOFU's three numbers of a Q&A set: the probability of the answers
    (with `normalised`, against the wrong options: real authors and world
    facts), the ROUGE-L recall of greedy answers, and the raw truth ratios
    (`correct` against `wrong`); with the answers generated."""
    args = (model, tokenizer, questions, correct, wrong)
    nlls = option_nlls(*args, eos=True)  # one pass for both numbers
    if normalised:  # the options' probabilities, of `correct` = `answers`
        prob = normalised_probability(*args, nlls=nlls)
    else:
        prob = metrics.answer_probability(model, tokenizer, questions,
                                          answers, eos=True).numpy()
    generated = generate_answers(model, tokenizer, questions, ANSWER_TOKENS)
    right, bad = truth_ratio_probs(*args, nlls=nlls)
    return {'probability': float(prob.mean()),
            'ROUGE': float(metrics.rouge_l_recall(generated, answers).mean()),
            'right': right, 'wrong': bad, 'ratios': bad / (right + 1e-10),
            'answers': generated}


def measure(setup, role):
    """OpenUnlearning's numbers of role `role` (None: the base model, which
    never saw any of the people), and the forget truth ratios (for Forget
    Quality) and greedy answers."""
    tok, n = setup.tokenizer, setup.sizes['utility_qa']
    f, h = setup.tokens['forget'], setup.tokens['holdout']
    fqa, rqa, world = setup.qa['forget'], setup.qa['retain'][:n], setup.world

    def tofu(items):  # TOFU's Q&A items: paraphrased and perturbed answers
        return qa_metrics(m, tok, [q['question'] for q in items],
                          [q['answer'] for q in items],
                          [q['paraphrased_answer'] for q in items],
                          [q['perturbed_answers'] for q in items])

    out = {}
    with setup.roles.active(role) as m:
        out.update({f'forget/{k}': v for k, v in answer_metrics(m, f).items()})
        forget = tofu(fqa)
        out['forget/probability'] = forget['probability']
        out['forget/ROUGE'] = forget['ROUGE']
        out['forget/truth_ratio'] = metrics.truth_ratio(forget['ratios'],
                                                        forget=True)
        out['forget/truth_ratio_prob_mean'] = metrics.truth_ratio_prob_mean(
            forget['right'], forget['wrong'])
        retain = tofu(rqa)
        wrong = [[c for j, c in enumerate(w['choices']) if j != w['label']]
                 for w in world]
        answers = [w['choices'][w['label']] for w in world]
        facts = qa_metrics(m, tok, [w['question'] for w in world], answers,
                           answers, wrong, normalised=True)
        utility = {}
        for name, r in (('retain', retain), ('world_facts', facts)):
            utility[f'{name}/probability'] = r['probability']
            utility[f'{name}/ROUGE'] = r['ROUGE']
            utility[f'{name}/truth_ratio'] = metrics.truth_ratio(
                r['ratios'], forget=False)
        out.update(utility)
        out['model_utility'] = metrics.model_utility(utility.values())
        r = setup.tokens['retain']
        out['retain/perplexity'] = metrics.perplexity(m, r['input_ids'],
                                                      r['attention_mask'])
        sets = [dict(d, texts=answer_texts(tok, d)) for d in (f, h)]
        aucs = metrics.mia_aucs(m, *sets, MIA_ATTACKS,
                                reference_stats=setup.reference_stats)
        out.update({f'mia/{a}': v for a, v in aucs.items()})
    return out, {'ratios': forget['ratios'], 'answers': forget['answers']}


def answer_texts(tokenizer, batch):
    """The answer text of each row of a `qa_batch` (its target tokens
    decoded without special tokens, as OpenUnlearning's zlib attack reads
    it)."""
    return [tokenizer.decode(ids[t.bool()], skip_special_tokens=True)
            for ids, t in zip(batch['input_ids'], batch['target_mask'])]


def relearn(setup, role, steps, lr=None):
    """The relearning probe: fine-tune a copy of `role` for `steps`
    updates on the texts of the first half of the forget people, then
    measure Extraction Strength and MA on the other half, which it did not
    see again (their answers). Returns {'before': .., 'after': ..} for
    each."""
    roles = setup.roles
    half = len(setup.people['forget']) // 2 or 1
    seen = [t for r in setup.people['forget'][:half]
            for t in person_texts(r, setup.tokenizer.eos_token)]
    rest = [q for r in setup.people['forget'][half:] for q in r['qa']]
    probe = qa_batch(setup.tokenizer, [q['question'] for q in rest],
                     [q['answer'] for q in rest], eos=True)
    with roles.active(role) as m:
        out = {'before': answer_metrics(m, probe)}
    model = roles.finetune(role, 'relearn', seen, steps, lr)
    out['after'] = answer_metrics(model, probe)
    roles.drop('relearn')
    return out


def compare(setup, budget, callbacks=(), progress=True):
    """Measure the original and the oracle, run every method of the
    budget, measure and probe each; returns the rows of the table
    (role -> numbers) and each run's TrainResult."""
    rows, runs = {}, {}
    for role in ('original', 'retrained'):
        rows[role], setup.results[role] = measure(setup, role)
    for method in budget.methods:
        helper_roles(setup, method)  # not counted in the method's time
        t0 = time.perf_counter()
        cbs = [partial(cb, method) for cb in callbacks]
        runs[method] = unlearn(setup, method, budget, cbs, progress)
        seconds = time.perf_counter() - t0
        rows[method], setup.results[method] = measure(setup, method)
        rows[method].update(steps=runs[method].steps,
                            status=runs[method].status, seconds=seconds)
    oracle = setup.results['retrained']['ratios']
    for role, row in rows.items():
        row['forget_quality'] = metrics.forget_quality(
            setup.results[role]['ratios'], oracle)
        # TOFU's PrivLeak: on the Min-K% attack's AUC
        row['privleak'] = metrics.privleak(row['mia/min_k'],
                                           rows['retrained']['mia/min_k'])
    if budget.relearn_steps:
        for role in ('retrained', *budget.methods):
            probe = relearn(setup, role, budget.relearn_steps)
            rows[role]['relearn/ES_before'] = probe['before']['ES']
            rows[role]['relearn/ES_after'] = probe['after']['ES']
            rows[role]['relearn/MA_after'] = probe['after']['MA']
    return rows, runs


# a model "still works" while its Model Utility keeps this share of the
# original's: the harmonic mean falls to 0 with any of its parts (greedy
# answers to world facts that no longer hold the fact, say)
WORKING_UTILITY = 0.5


def forgetting_has_a_price(rows, methods):
    """The claim that no method forgets for free, from the table's `rows`
    (role -> numbers, with 'original') of the `methods` that ran.

    Returns (holds, evidence). It holds when every method that halved the
    original's forget ES lost Model Utility, and at least one of those
    still works (Model Utility at least `WORKING_UTILITY` of the
    original's): a ruined model has lost utility, but says nothing of the
    price of forgetting.
    """
    o = rows['original']
    halved = [m for m in methods
              if rows[m]['forget/ES'] <= 0.5 * o['forget/ES']]
    floor = WORKING_UTILITY * o['model_utility']
    working = [m for m in halved if rows[m]['model_utility'] >= floor]
    paid = all(rows[m]['model_utility'] < o['model_utility'] for m in halved)
    evidence = ('model utility of every method that halved forget ES, '
                f"against the original's {o['model_utility']:.3f}: "
                + (', '.join(f"{m} {rows[m]['model_utility']:.3f}"
                             + ('' if m in working else ' (no longer works)')
                             for m in halved) or 'none halved it')
                + f'; still working (at least {floor:.3f}): '
                + (', '.join(working) or 'none'))
    return bool(working) and paid, evidence


def tagged(callback, method, event):
    """A training event renamed for a figure of all methods at once:
    `forget/MA` becomes `<method> forget MA`."""
    out = {'step': event['step'], 'kind': event['kind']}
    for key, name in (('forget/MA', 'forget MA'),
                      ('retain/perplexity', 'retain perplexity')):
        if key in event:
            out[f'{method} {name}'] = event[key]
    callback(out)

