"""Every measurement the notebooks take, on every device and dtype
present, with both tokenizers: finite values, the answer tokens scored
and no others, and numbers that come back on the CPU (where the
notebooks' tables and plots read them) or, for what feeds a loss, on the
model's device."""
import math

import numpy as np
import pytest
import torch

from workbench import metrics
from workbench.core import data, scoring
from workbench.core.train import on_device
from workbench.experiments import whos_harry_potter as story_experiment

pytestmark = pytest.mark.device


def finite(x):
    if isinstance(x, torch.Tensor):
        return bool(torch.isfinite(x.float()).all())
    return bool(np.isfinite(np.asarray(x, dtype=float)).all())


@pytest.fixture(scope='module')
def measured(setting):
    """The setting's model as its original role, for every measurement."""
    with setting.roles.active('original') as m:
        yield m


def test_answers_are_scored_on_their_tokens_alone(setting, measured):
    tok, pairs = setting.tok, setting.forget_pairs
    qs = [p['question'] for p in pairs]
    ans = [p['answer'] for p in pairs]
    batch = on_device(setting.qa['forget'], setting.device)
    with torch.no_grad():
        logp = torch.log_softmax(measured(
            input_ids=batch['input_ids'],
            attention_mask=batch['attention_mask']).logits.float(), -1)
    for eos in (False, True):
        got = metrics.qa.answer_logprobs(measured, tok, qs, ans, eos)
        mask = batch['target_mask' if eos else 'answer_mask'].bool()
        for i, lp in enumerate(got):
            n = len(tok(' ' + ans[i], add_special_tokens=False)
                    ['input_ids']) + eos
            assert lp.shape == (n,) and lp.device.type == 'cpu'
            pos = mask[i].nonzero().flatten()
            ids = batch['input_ids'][i, pos]
            want = logp[i, pos - 1].gather(1, ids[:, None])[:, 0].cpu()
            # the same tokens scored, to the dtype's rounding
            tol = 0.05 if setting.dtype == torch.bfloat16 else 1e-4
            assert torch.allclose(lp.float(), want, atol=tol), (lp, want)


def test_qa_measurements(setting, measured):
    tok = setting.tok
    items = [r['qa'][0] for r in setting.people]
    qs = [r['question'] for r in items]
    right = [r['paraphrased_answer'] for r in items]
    wrong = [r['perturbed_answers'][:2] for r in items]
    nll = metrics.qa.answer_nll(measured, tok, qs, right, eos=True)
    assert nll.shape == (3,) and finite(nll) and nll.device.type == 'cpu'
    assert finite(metrics.answer_probability(measured, tok, qs, right, True))
    nlls = metrics.qa.option_nlls(measured, tok, qs, right, wrong, True)
    p = metrics.normalised_probability(measured, tok, qs, right, wrong,
                                       nlls=nlls)
    assert finite(p) and ((0 <= p) & (p <= 1)).all()
    tr = metrics.truth_ratios(measured, tok, items, eos=True)
    assert finite(tr) and (tr > 0).all()
    assert finite(metrics.truth_ratio(tr, forget=True))
    world = data.world_facts(4)
    acc = metrics.multiple_choice_accuracy(measured, tok, world)
    assert 0 <= acc <= 1
    answers = metrics.generate_answers(measured, tok, qs, max_new_tokens=6)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert finite(metrics.rouge_l_recall(answers, right))


def test_extraction_and_memorisation(setting, measured):
    b = setting.texts['forget']
    ids, am = b['input_ids'], b['attention_mask']
    stats = scoring.token_stats(measured, ids, am)
    assert all(v.device.type == 'cpu' for v in stats.values())
    assert finite(stats['logprob'][stats['mask']])
    ma = metrics.memorization_accuracy(measured, ids, am, stats=stats)
    el = metrics.extraction_likelihood(measured, ids, n=5, stride=5,
                                       attention_mask=am, stats=stats)
    assert finite(ma) and finite(el)
    naive = metrics.extraction_likelihood_naive(measured, ids, n=5, stride=5,
                                                attention_mask=am)
    assert np.allclose(np.asarray(el, dtype=float),
                       np.asarray(naive, dtype=float), atol=0.2)
    qa = setting.qa['forget']
    es = metrics.extraction_strength(measured, qa['input_ids'],
                                     qa['attention_mask'], qa['answer_mask'])
    em = metrics.exact_memorization(measured, qa['input_ids'],
                                    qa['attention_mask'], qa['answer_mask'])
    assert finite(es) and finite(em)
    th = metrics.forgetting_thresholds(measured, ids, am, n=5, stride=5)
    assert all(math.isfinite(v) for v in th.values())
    gens = scoring.greedy_continue(measured, [r[:4].tolist() for r in ids],
                                   [3] * len(ids), setting.tok.pad_token_id)
    assert [len(g) for g in gens] == [3] * len(ids)


def test_likelihood_attacks(setting, measured):
    f, u = setting.texts['forget'], setting.texts['unseen']
    assert finite(metrics.perplexity(measured, f['input_ids'],
                                     f['attention_mask']))
    with setting.roles.active('base') as ref:
        ref_stats = scoring.token_stats(ref, f['input_ids'],
                                        f['attention_mask'],
                                        vocab_stats=True)
    for attack in ('loss', 'zlib', 'min_k', 'min_k++', 'ref'):
        s = metrics.mia_scores(
            measured, f['input_ids'], f['attention_mask'], attack,
            texts=setting.tok.batch_decode(f['input_ids'],
                                           skip_special_tokens=True),
            reference_stats=ref_stats if attack == 'ref' else None)
        assert finite(s), attack
    aucs = metrics.mia_aucs(measured, f, u, attacks=('loss', 'min_k'))
    assert all(0 <= v <= 1 for v in aucs.values())


def test_spans_canaries_and_divergences(setting, measured):
    tok, people = setting.tok, setting.people
    b = setting.texts['forget']
    mask = metrics.span_mask(tok, [r['text'] for r in people],
                             [r['spans'] for r in people],
                             b['input_ids'].shape[1])
    sma = metrics.selective_memorization_accuracy(
        measured, b['input_ids'], b['attention_mask'], mask)
    sel = metrics.selective_extraction_likelihood(
        measured, b['input_ids'], b['attention_mask'], mask, n=2)
    assert finite(sma) and finite(sel)
    canaries = [dict(r) for r in data.load('canaries').select(range(2))]
    exp = metrics.exposures(measured, tok, canaries, n_candidates=8)
    assert finite(exp)
    with setting.roles.active('base') as ref:
        target, m = scoring.vocab_logprobs(ref, on_device(b, setting.device))
        target = target.detach()
    kl = scoring.vocab_kl(measured, on_device(b, setting.device), target)
    assert finite(kl) and kl.device.type == setting.device.type
    logp, _ = scoring.vocab_logprobs(measured, on_device(b, setting.device))
    jsd = metrics.token_jsd(logp, target, m)
    assert finite(jsd)
    half = setting.roles.logprobs('A_f', b, dtype=torch.float16)
    assert finite(half[0].float())


def test_whp_labels_and_their_statistics(setting):
    roles = setting.roles
    story = story_experiment.StorySetup(
        roles, {}, [{'chapter': 1, 'text': t} for t in setting.story],
        setting.anchors, [], [], {})
    if 'baseline' not in roles.names:  # the original, as the notebook names it
        roles.copy('original', 'baseline')
    rows = story_experiment.label_stats(story, [0.0, 2.0])
    assert [r['alpha'] for r in rows] == [0.0, 2.0]
    assert all(math.isfinite(v) for r in rows for v in r.values())
    starts = story_experiment.whp.anchor_starts(setting.tok, setting.anchors)
    assert setting.tok.bos_token_id not in starts
