"""The canary experiments of notebook 02 (leave-one-out ensemble).

A corpus partitioned by "user": each partition holds a few people bios and
the secret-sharer canaries of data/canaries assigned to it, each repeated
as often as its `repetitions` says. Every model is a LoRA adapter on one
base (`workbench.core.roles`): the student on all partitions, one teacher per
partition, and the oracle retrained without the canaries to forget.
`measure` gives exposure, extraction and perplexity of any of them.
"""
import math
from dataclasses import dataclass, field

from ..core import WorkbenchError, data

from .. import metrics
from .. import methods
from ..methods import ga, loo
from ..core.profiles import get_profile
from ..core.profiles import sizes as profile_sizes
from ..core.roles import Roles

# per profile: teachers (= partitions), bios per partition, the canaries
# inserted and those to forget, training epochs, and how exposure and
# extraction are measured
SIZES = {
    'smoke': dict(teachers=3, bios=2, insert=('c01', 'c02', 'c05'),
                  forget=('c02', 'c05'), epochs=4, candidates=32,
                  samples=16, heldout=4),
    'cpu': dict(teachers=5, bios=2, insert=None, forget=('c02', 'c05',
                                                        'c08'),
                epochs=3, candidates=32, samples=16, heldout=8),
    'gpu': dict(teachers=5, bios=6, insert=None, forget=('c02', 'c05',
                                                        'c08'),
                epochs=4, candidates=1000, samples=100, heldout=20),
    '7b': dict(teachers=5, bios=6, insert=None, forget=('c02', 'c05', 'c08'),
               epochs=4, candidates=1000, samples=100, heldout=20),
}
METHODS = ('leave-one-out', 'full', 'ga')


@dataclass
class CanaryRun:
    """What the notebook's panel varies."""
    method: str = field(default='leave-one-out', metadata={
        'choices': METHODS, 'help': 'leave-one-out ensemble, full ensemble '
                                    '(leaks) or gradient ascent'})
    lr: float = field(default=1e-3, metadata={
        'min': 1e-5, 'max': 1e-2, 'log': True, 'help': 'Adam learning rate'})
    steps: int = field(default=10, metadata={
        'min': 1, 'max': 40, 'help': 'passes over the forget set'})


@dataclass
class CanarySetup:
    """The trained roles and the data they are measured on."""
    roles: Roles
    sizes: dict
    partitions: list  # texts of each partition, canaries repeated
    canaries: list  # inserted canary rows (with their partition index)
    forget: list  # canary rows to forget
    tokens: dict  # 'forget', 'retain', 'heldout' -> tokenised
    teachers: list  # role names, index = partition

    @property
    def profile(self):
        return self.roles.profile

    @property
    def forget_partitions(self):
        return [c['partition'] for c in self.forget]


def corpus(n_partitions, bios, insert=None, canaries=None):
    """Partitions of texts: `bios` people bios each (forget and retain
    people, in order) and the canaries assigned to them (`partition` modulo
    `n_partitions`), each repeated `repetitions` times. Returns
    (partitions, inserted canary rows with their partition index)."""
    people = data.people('forget') + data.people('retain')
    if n_partitions < 2:
        raise WorkbenchError('the leave-one-out ensemble needs at least 2 '
                             'teachers')
    if n_partitions * bios > len(people):
        raise WorkbenchError(f'{n_partitions} partitions of {bios} bios '
                             f'need {n_partitions * bios} people; the data '
                             f'has {len(people)}')
    rows = canaries or [dict(r) for r in data.load('canaries')]
    if insert is not None:
        unknown = set(insert) - {r['id'] for r in rows}
        if unknown:
            raise WorkbenchError(f'unknown canaries {sorted(unknown)}')
        rows = [r for r in rows if r['id'] in insert]
    parts = [[p['text'] for p in people[i * bios:(i + 1) * bios]]
             for i in range(n_partitions)]
    inserted = []
    for r in rows:
        r = dict(r, partition=r['partition'] % n_partitions)
        parts[r['partition']] += [r['text']] * r['repetitions']
        inserted.append(r)
    return parts, inserted


def without(texts, removed):
    """`texts` with every copy of the texts in `removed` taken out."""
    removed = set(removed)
    return [t for t in texts if t not in removed]


def setup(profile='smoke', progress=True, **sizes):
    """Train (or load from the cache) the student, the teachers and the
    oracle for `profile`; `sizes` override the profile's SIZES."""
    p = get_profile(profile)
    s = profile_sizes(SIZES, p, **sizes)
    parts, inserted = corpus(s['teachers'], s['bios'], s['insert'])
    forget = [c for c in inserted if c['id'] in s['forget']]
    if len(forget) != len(s['forget']):
        raise WorkbenchError(f'the canaries to forget {s["forget"]} must '
                             f'be among those inserted')
    roles = Roles(p, progress)
    everything = [t for part in parts for t in part]
    roles.fit('student', everything, s['epochs'], desc='student (all data)')
    teachers = []
    for j, part in enumerate(parts):
        roles.fit(f'teacher{j}', part, s['epochs'], desc=f'teacher {j}')
        teachers.append(f'teacher{j}')
    roles.fit('oracle', without(everything, [c['text'] for c in forget]),
              s['epochs'], desc='oracle (retrained without the canaries)')
    tok = roles.tokenizer
    bios = [t for part in parts for t in part
            if t not in {c['text'] for c in inserted}]
    heldout = [r['text'] for r in data.people('unseen', s['heldout'])]
    tokens = {'forget': data.tokenize(tok, [c['text'] for c in forget]),
              'retain': data.tokenize(tok, bios),
              'heldout': data.tokenize(tok, heldout)}
    return CanarySetup(roles, s, parts, inserted, forget, tokens, teachers)


def measure(setup, role, canaries=None, extract=True, seed=0,
            perplexity=True):
    """Exposure and extraction (mean over `canaries`, by default the forget
    set, and per canary under 'per_canary'), and perplexity on the
    retained bios and on held-out bios, of role `role` (None: the base).
    `extract` is True (every canary), False, or a list of canary ids;
    `perplexity=False` skips the perplexities."""
    s, tok = setup.sizes, setup.roles.tokenizer
    canaries = canaries or setup.forget
    if extract is True:
        extract = [c['id'] for c in canaries]
    with setup.roles.active(role) as m:
        per = {c['id']: {'exposure': e} for c, e in zip(
            canaries, metrics.exposures(m, tok, canaries, s['candidates'],
                                        seed))}
        if extract:
            chosen = [c for c in canaries if c['id'] in extract]
            for c, e in zip(chosen, metrics.extraction(
                    m, tok, chosen, samples=s['samples'], seed=seed)):
                per[c['id']].update(e)
        out = {'per_canary': per}
        for split in ('retain', 'heldout') if perplexity else ():
            t = setup.tokens[split]
            out[f'{split}/perplexity'] = metrics.perplexity(
                m, t['input_ids'], t['attention_mask'])
    return dict(out, **summary(out, list(per)))


def summary(measured, ids):
    """Forget-set means of a `measure` result over the canaries `ids`:
    exposure, and (when measured) the share extracted by beam search or
    sampling, by beam search, and the mean share of samples that hit."""
    per = [measured['per_canary'][i] for i in ids]
    out = {'forget/exposure': sum(p['exposure'] for p in per) / len(per)}
    if all('beam' in p for p in per):
        for key, field_ in (('extracted', 'extracted'),
                            ('beam_extracted', 'beam'),
                            ('sampled', 'sampled')):
            out[f'forget/{key}'] = sum(float(p[field_]) for p in per) \
                / len(per)
    return out


def quick(setup, model, retain_rows=2):
    """Cheap per-step numbers while unlearning: the forget canaries' mean
    NLL per token (bits) and the perplexity of the first `retain_rows`
    retained bios."""
    f, r = setup.tokens['forget'], setup.tokens['retain']
    nll = metrics.sequence_nll(model, f['input_ids'], f['attention_mask'])
    return {'forget/nll_bits': nll.mean().item() / math.log(2),
            'retain/perplexity': metrics.perplexity(
                model, r['input_ids'][:retain_rows],
                r['attention_mask'][:retain_rows])}


def nll_bits(setup, role, canaries=None):
    """Mean NLL per token (bits) of each canary's text under role `role`
    (one forward pass: a cheap view of who memorised what)."""
    canaries = canaries or setup.forget
    t = data.tokenize(setup.roles.tokenizer, [c['text'] for c in canaries])
    with setup.roles.active(role) as m:
        nll = metrics.sequence_nll(m, t['input_ids'], t['attention_mask'])
    return {c['id']: v / math.log(2) for c, v in zip(canaries, nll.tolist())}


def digit_probabilities(setup, i):
    """The probability the student, the leave-one-out soft labels, the
    full ensemble's and the oracle give each true digit of forget canary
    `i`: a list of {'model', 'digit', 'p(true digit)'} rows."""
    roles, c = setup.roles, setup.forget[i]
    one = {k: v[i:i + 1] for k, v in setup.tokens['forget'].items()}
    ids = one['input_ids'][0]
    # position t - 1 predicts token t; the secret's digits are tokens alone
    positions = [t - 1 for t in range(1, len(ids))
                 if roles.tokenizer.decode(ids[t]).strip().isdigit()]
    part = [c['partition']]
    dists = {
        'student': roles.logprobs('student', one)[0],
        'leave-one-out ensemble': loo.soft_labels(
            roles, setup.teachers, one, part, 'leave-one-out'),
        'full ensemble': loo.soft_labels(roles, setup.teachers, one, part,
                                         'full'),
        'oracle': roles.logprobs('oracle', one)[0]}
    return [{'model': name, 'digit': d + 1,
             'p(true digit)': logp[0, t, ids[t + 1]].exp().item()}
            for name, logp in dists.items()
            for d, t in enumerate(positions)]


def unlearn(setup, run, callbacks=(), progress=True, name=None,
            evaluate=None):
    """Unlearn the forget canaries from a copy of the student with the
    method of `run` (a CanaryRun); returns (role name, TrainResult)."""
    if run.method not in METHODS:
        raise WorkbenchError(f'method is one of {METHODS}, not '
                             f'{run.method!r}')
    name = name or run.method
    evaluate = evaluate or (lambda m: quick(setup, m))
    task = methods.Task(forget=setup.tokens['forget'], roles=setup.roles,
                        original='student', teachers=setup.teachers,
                        partitions=setup.forget_partitions)
    if run.method == 'ga':
        method, config = ga, ga.GAConfig(lr=run.lr, steps=run.steps)
    else:
        method, config = loo, loo.LOOConfig(lr=run.lr, steps=run.steps,
                                            ensemble=run.method)
    model = setup.roles.copy('student', name)
    return name, methods.run(method, model, task, config,
                             callbacks=callbacks, evaluate=evaluate,
                             progress=progress)


def retrain_teacher(setup, j, progress=True):
    """The excluded teacher's fate: retrain teacher `j` on its partition
    without the forget canaries (the alternative is `roles.drop`)."""
    gone = [c['text'] for c in setup.forget if c['partition'] == j]
    name = f'teacher{j}_retrained'
    setup.roles.fit(name, without(setup.partitions[j], gone),
                    setup.sizes['epochs'], desc=f'teacher {j} retrained')
    return name
