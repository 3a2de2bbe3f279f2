"""The people experiments of notebook 04 (KGA).

D = D_f + D_r: forget and retain people's bios; D_n: other people, never in
A_D's training; a test set of yet other people, seen by no model. Every
model is a LoRA adapter on one base (`workbench.core.roles`): A_D on D, A_f on
D_f, A_n on D_n, and A_Dr on D_r alone (the retrained model, for evaluation
only). `measure` compares any of them with A_Dr.
"""
from dataclasses import dataclass

import torch

from ..core import data

from .. import metrics
from .. import methods
from ..methods import kga
from ..core.profiles import get_profile
from ..core.profiles import sizes as profile_sizes
from ..core.roles import Roles
from ..core.scoring import vocab_logprobs

# per profile: people in D_f, D_r, D_n and the test set; epochs of A_D and
# A_Dr, and of A_f and A_n. A_f and A_n are models trained on a small data
# set, not memorisers of it: trained as long as A_D, their near one-hot
# predictions dominate both gaps and KGA acts like gradient ascent.
SIZES = {
    'smoke': dict(forget=2, retain=4, new=2, test=4, epochs=8, side_epochs=2),
    'cpu': dict(forget=4, retain=8, new=4, test=8, epochs=8, side_epochs=2),
    'gpu': dict(forget=10, retain=30, new=10, test=10, epochs=8,
                side_epochs=2),
    '7b': dict(forget=10, retain=30, new=10, test=10, epochs=8,
               side_epochs=2),
}


@dataclass
class KGASetup:
    """The trained roles, the people and the tokenised splits."""
    roles: Roles
    sizes: dict
    rows: dict  # split -> people rows
    tokens: dict  # 'forget', 'retain', 'new', 'test' -> tokenised
    world: list
    forget_nll_before: object = None  # A_D's NLL per forget text

    @property
    def profile(self):
        return self.roles.profile


def setup(profile='smoke', progress=True, **sizes):
    """Train (or load from the cache) A_D, A_f, A_n and A_Dr."""
    p = get_profile(profile)
    s = profile_sizes(SIZES, p, **sizes)
    unseen = data.people('unseen', s['new'] + s['test'])
    rows = {'forget': data.people('forget', s['forget']),
            'retain': data.people('retain', s['retain']),
            'new': unseen[:s['new']], 'test': unseen[s['new']:]}
    texts = {k: [r['text'] for r in v] for k, v in rows.items()}
    roles = Roles(p, progress)
    e = s['epochs']
    roles.fit('A_D', texts['forget'] + texts['retain'], e,
              desc='A_D (all data)')
    roles.fit('A_f', texts['forget'], s['side_epochs'],
              desc='A_f (forget set)')
    roles.fit('A_n', texts['new'], s['side_epochs'], desc='A_n (new data)')
    roles.fit('A_Dr', texts['retain'], e, desc='A_Dr (retrained)')
    tokens = {k: data.tokenize(roles.tokenizer, v) for k, v in texts.items()}
    return KGASetup(roles, s, rows, tokens, data.world_facts(p.n_world))


# people of the test set whose JSD is followed after every KGA update (the
# tables measure all of them)
LIVE_TEST_PEOPLE = 4


@torch.no_grad()
def quick(setup, model, rows=2, forget=None, test_people=None):
    """Per-step numbers: JSD to A_Dr on the forget and test sets (mean
    over real tokens; `rows` texts at a time). `forget`: the model's
    (logp, mask) on the whole forget set, when already computed;
    `test_people`: only the first so many of the test set.

    A_Dr's distributions are computed with each chunk (float16: the JSD
    moves by less than 1e-4 nats, a test checks), not held: held for the
    two sets they were the largest thing in memory while KGA trains."""
    out = {}
    for s in ('forget', 'test'):
        tokens = setup.tokens[s]
        n = tokens['input_ids'].shape[0]
        n = min(n, test_people) if s == 'test' and test_people else n
        total = count = 0.0
        for i in range(0, n, rows):
            chunk = {k: v[i:min(i + rows, n)] for k, v in tokens.items()}
            ref, mask = setup.roles.logprobs('A_Dr', chunk,
                                             dtype=torch.float16)
            if s == 'forget' and forget is not None:
                logp = forget[0][i:i + rows]
            else:
                logp, _ = vocab_logprobs(model, chunk)
            w = min(logp.shape[1], ref.shape[1])  # widths trimmed apart
            total += metrics.token_jsd(logp[:, :w], ref[:, :w],
                                       mask[:, :w]).sum().item()
            count += mask.sum().item()
        out[f'{s}/jsd_to_retrained'] = total / count
    return out


def measure(setup, role, world=True):
    """JSD to A_Dr (forget, test), forget MA, perplexities, membership
    inference (forget vs test), world_facts accuracy, and LPD/PDLP on the
    forget set against A_D, of role `role`."""
    roles, tok = setup.roles, setup.roles.tokenizer
    f, t = setup.tokens['forget'], setup.tokens['test']
    if setup.forget_nll_before is None:  # A_D is frozen: once
        with roles.active('A_D') as m:
            setup.forget_nll_before = metrics.sequence_nll(
                m, f['input_ids'], f['attention_mask'])
    nll_before = setup.forget_nll_before
    with roles.active(role) as m:
        out = quick(setup, m)
        stats = metrics.token_stats(m, f['input_ids'], f['attention_mask'])
        test = metrics.token_stats(m, t['input_ids'], t['attention_mask'])
        out['forget/MA'] = metrics.memorization_accuracy(
            m, f['input_ids'], stats=stats).mean().item()
        out['forget/perplexity'] = metrics.perplexity(m, f['input_ids'],
                                                      stats=stats)
        nll_after = metrics.sequence_nll(m, f['input_ids'], stats=stats)
        out.update({f'forget/{k}': v for k, v in metrics.lpd_pdlp(
            nll_before.numpy(), nll_after.numpy()).items()})
        out['test/perplexity'] = metrics.perplexity(m, t['input_ids'],
                                                    stats=test)
        out['mia/auc'] = metrics.mia_auc(m, f, t, stats=[stats, test])
        r = setup.tokens['retain']
        out['retain/MA'] = metrics.memorization_accuracy(
            m, r['input_ids'], r['attention_mask']).mean().item()
        if world:
            out.update(metrics.world_facts_metrics(m, tok, setup.world))
    return out


def unlearn(setup, config, callbacks=(), progress=True, name='A_star'):
    """KGA from A_D with `config` (a `kga.KGAConfig`); returns the
    TrainResult (role `name` holds the unlearned model)."""
    t = setup.tokens
    task = methods.Task(forget=t['forget'], retain=t['retain'], new=t['new'],
                        roles=setup.roles, original='A_D')
    model = setup.roles.copy('A_D', name)
    return methods.run(kga, model, task, config, callbacks=callbacks,
                       evaluate_forget=lambda m, logp, mask: quick(
                           setup, m, forget=(logp, mask),
                           test_people=LIVE_TEST_PEOPLE),
                       progress=progress)
