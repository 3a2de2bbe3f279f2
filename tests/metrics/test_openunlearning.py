"""The comparison's metrics against OpenUnlearning's formulas, written out
here the way its evaluation code computes them (`src/evals/metrics/` of
locuslab/open-unlearning): labels of -100 on the prompt, the answer closed
by EOS, losses averaged over the labelled tokens, per-token scores over
the labelled tokens but the last (the EOS)."""
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import hmean, ks_2samp
from sklearn.metrics import roc_auc_score

from workbench import metrics
from workbench.core.data import prompt_of, qa_batch
from workbench.metrics.qa import answer_nll, generate_answers

from conftest import tiny_llama

QUESTIONS = ['When was Ada Quill born?', 'Where does Bram Okoro work?',
             'What is the capital of France?']
ANSWERS = ['Ada Quill was born on May 2, 1961.',
           'Bram Okoro works at Lindqvist and Sons.', 'Paris']


@pytest.fixture(scope='module')
def model(smol_tokenizer):
    """A tiny model with peaked predictions (its output head scaled up):
    a near-uniform distribution over 49,152 tokens has a variance that
    float32 cannot resolve, which Min-K%++ divides by."""
    m = tiny_llama(vocab=len(smol_tokenizer), seed=3)
    with torch.no_grad():
        m.model.norm.weight.mul_(8)
    return m


def labelled(tok, question, answer):
    """One item as OpenUnlearning's collator gives it: ids, and labels of
    -100 on the prompt and the answer's tokens with EOS appended."""
    prompt = tok(prompt_of(question))['input_ids']
    ids = prompt + tok(' ' + answer)['input_ids'] + [tok.eos_token_id]
    labels = [-100] * len(prompt) + ids[len(prompt):]
    return torch.tensor([ids]), torch.tensor([labels])


@torch.no_grad()
def avg_loss(model, ids, labels):
    """evaluate_probability's avg_loss: summed CE of the labelled tokens
    over their number."""
    logits = model(input_ids=ids).logits[:, :-1]
    ce = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:],
                         ignore_index=-100, reduction='none').sum(-1)
    return (ce / (labels != -100).sum(-1)).item()


@torch.no_grad()
def tokenwise(model, ids, labels):
    """tokenwise_(vocab_)logprobs: the labelled positions but the last
    (EOS): target log-probs, the vocabulary's log-probs, the labels."""
    logp = model(input_ids=ids).logits.log_softmax(-1)[0, :-1]
    target = logp.gather(1, ids[0, 1:, None])[:, 0]
    idx = (labels[0] != -100).nonzero()[:, 0][:-1]
    start, end = idx[0].item(), idx[-1].item()
    return target[start - 1:end], logp[start - 1:end], labels[0, idx]


def ou_min_k(lp, k=0.4):
    n = max(1, int(len(lp) * k))
    return -np.mean(np.sort(lp.numpy())[:n])


def ou_min_k_pp(target, vocab, k=0.4):
    mu = (vocab.exp() * vocab).sum(-1)
    sigma = ((vocab.exp() * vocab ** 2).sum(-1) - mu ** 2).clamp(min=1e-6)
    scores = ((target - mu) / sigma.sqrt()).numpy()
    n = max(1, int(len(scores) * k))
    return -np.mean(np.sort(scores)[:n])


def ou_extraction_strength(preds, labels):
    n = len(labels)
    for k in range(n):
        if torch.equal(preds[k:], labels[k:]):
            break
    return 1 - k / n


def test_eos_closes_each_answer(smol_tokenizer):
    tok = smol_tokenizer
    b = qa_batch(tok, QUESTIONS, ANSWERS, eos=True)
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        ids, labels = labelled(tok, q, a)
        n = ids.shape[1]
        assert b['input_ids'][i, :n].tolist() == ids[0].tolist()
        assert b['target_mask'][i, :n].tolist() == \
            (labels[0] != -100).int().tolist()
        # the answer's own tokens: all of the target but the EOS
        assert b['answer_mask'][i].sum() == b['target_mask'][i].sum() - 1
        assert b['answer_mask'][i, n - 1] == 0


def test_answer_loss_and_probability_are_openunlearnings(model,
                                                         smol_tokenizer):
    tok = smol_tokenizer
    ours = answer_nll(model, tok, QUESTIONS, ANSWERS, eos=True)
    theirs = [avg_loss(model, *labelled(tok, q, a))
              for q, a in zip(QUESTIONS, ANSWERS)]
    assert ours.tolist() == pytest.approx(theirs, rel=1e-5)
    prob = metrics.answer_probability(model, tok, QUESTIONS, ANSWERS,
                                      eos=True)
    assert prob.tolist() == pytest.approx(np.exp(-np.array(theirs)),
                                          rel=1e-4)
    # without the EOS the loss is another number
    assert not np.allclose(answer_nll(model, tok, QUESTIONS, ANSWERS),
                           theirs, rtol=1e-3)


def test_truth_ratios_and_option_probability_are_openunlearnings(
        model, smol_tokenizer):
    tok = smol_tokenizer
    qa = [{'question': q, 'paraphrased_answer': a,
           'perturbed_answers': [a[::-1], a.upper(), 'No idea.']}
          for q, a in zip(QUESTIONS, ANSWERS)]
    correct = np.array([avg_loss(model, *labelled(tok, r['question'],
                                                  r['paraphrased_answer']))
                        for r in qa])
    wrong = np.array([[avg_loss(model, *labelled(tok, r['question'], w))
                       for w in r['perturbed_answers']] for r in qa])
    # truth_ratio: the wrong answers' avg losses averaged, then exp(-.)
    c, w = np.exp(-correct), np.exp(-wrong.mean(1))
    tr = w / (c + 1e-10)
    ours = metrics.truth_ratios(model, tok, qa, eos=True)
    assert ours == pytest.approx(tr, rel=1e-4)
    assert metrics.truth_ratio(ours, forget=True) == pytest.approx(
        np.mean(np.minimum(tr, 1 / (tr + 1e-10))), rel=1e-4)
    assert metrics.truth_ratio(ours, forget=False) == pytest.approx(
        np.mean(np.maximum(0, 1 - tr)), rel=1e-4, abs=1e-9)
    right, bad = metrics.truth_ratio_probs(
        model, tok, QUESTIONS, ANSWERS, [r['perturbed_answers'] for r in qa],
        eos=True)
    assert metrics.truth_ratio_prob_mean(right, bad) == pytest.approx(
        np.mean(c / (c + w + 1e-10)), rel=1e-4)
    # probability_w_options: each wrong answer's probability summed
    norm = metrics.normalised_probability(
        model, tok, QUESTIONS, ANSWERS, [r['perturbed_answers'] for r in qa],
        eos=True)
    pw = np.exp(-wrong).sum(1)
    assert norm == pytest.approx(c / (c + pw + 1e-10), rel=1e-4)


def test_forget_quality_utility_and_privleak_by_hand():
    rng = np.random.default_rng(0)
    tr, tr_ret = rng.lognormal(size=40), rng.lognormal(0.5, size=40)
    assert metrics.forget_quality(tr, tr_ret) == pytest.approx(
        ks_2samp(tr, tr_ret).pvalue)
    # the KS test reads ranks: 1 / TR (another of its helpers) agrees
    assert metrics.forget_quality(tr, tr_ret) == pytest.approx(
        ks_2samp(1 / (tr + 1e-10), 1 / (tr_ret + 1e-10)).pvalue)
    assert metrics.model_utility([0.2, 0.5, 0.9]) == pytest.approx(
        hmean([0.2, 0.5, 0.9]))
    # PrivLeak on 1 - AUC: an under-unlearned model (the forget set looks
    # seen, AUC 0.9 against the oracle's 0.5) is at -80
    assert metrics.privleak(0.9, 0.5) == pytest.approx(-80.0)
    assert metrics.privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert metrics.privleak(0.5, 0.5) == pytest.approx(0.0)
    assert metrics.privleak(0.3, 0.6) == pytest.approx(
        ((1 - 0.3) - (1 - 0.6)) / (1 - 0.6 + 1e-10) * 100)


def test_mia_attacks_read_the_answers_as_openunlearning(model,
                                                        smol_tokenizer):
    tok = smol_tokenizer
    ref = tiny_llama(vocab=len(tok), seed=4)
    forget = (QUESTIONS[:2], ANSWERS[:2])
    holdout = (['Who is Cora Vint?', QUESTIONS[2]],
               ['Cora Vint is a welder from Dunmore.', 'Lyon'])
    theirs = {a: [] for a in ('loss', 'zlib', 'min_k', 'min_k++', 'ref')}
    sets, ref_stats = [], []
    for qs, ans in (forget, holdout):
        b = qa_batch(tok, qs, ans, eos=True)
        b['texts'] = [tok.decode(ids[t.bool()], skip_special_tokens=True)
                      for ids, t in zip(b['input_ids'], b['target_mask'])]
        sets.append(b)
        ref_stats.append(metrics.token_stats(ref, b['input_ids'],
                                             b['attention_mask']))
        for q, a, text in zip(qs, ans, b['texts']):
            ids, labels = labelled(tok, q, a)
            loss = avg_loss(model, ids, labels)
            target, vocab, _ = tokenwise(model, ids, labels)
            theirs['loss'].append(loss)
            theirs['zlib'].append(loss / len(zlib.compress(
                text.encode('utf-8'))))
            theirs['min_k'].append(ou_min_k(target))
            theirs['min_k++'].append(ou_min_k_pp(target, vocab))
            theirs['ref'].append(loss - avg_loss(ref, ids, labels))
    assert sets[0]['texts'][0].strip() == ANSWERS[0]
    labels = [0, 0, 1, 1]
    for attack, scores in theirs.items():
        ours = np.concatenate([metrics.mia_scores(
            model, b['input_ids'], b['attention_mask'], attack,
            texts=b['texts'], target_mask=b['target_mask'],
            answer_mask=b['answer_mask'], reference_stats=r,
            stats=metrics.token_stats(model, b['input_ids'],
                                      b['attention_mask'], vocab_stats=True))
            for b, r in zip(sets, ref_stats)])
        assert ours == pytest.approx(scores, rel=1e-4, abs=1e-6), attack
    aucs = metrics.mia_aucs(model, *sets, tuple(theirs),
                            reference_stats=ref_stats)
    for attack, scores in theirs.items():
        assert aucs[attack] == pytest.approx(roc_auc_score(labels, scores))


def test_extraction_strength_and_exact_memorization_skip_the_eos(
        model, smol_tokenizer):
    tok = smol_tokenizer
    b = qa_batch(tok, QUESTIONS, ANSWERS, eos=True)
    args = (model, b['input_ids'], b['attention_mask'], b['answer_mask'])
    es = metrics.extraction_strength(*args)
    em = metrics.exact_memorization(*args)
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        _, vocab, labels = tokenwise(model, *labelled(tok, q, a))
        preds = vocab.argmax(-1)
        assert es[i].item() == pytest.approx(
            ou_extraction_strength(preds, labels))
        assert em[i].item() == pytest.approx(
            (preds == labels).float().mean().item())


class EchoEOS(torch.nn.Module):
    """After the prompt says `x`, then EOS, then `x` again, forever."""

    def __init__(self, vocab, x, eos):
        super().__init__()
        self.vocab, self.x, self.eos = vocab, x, eos
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        from types import SimpleNamespace
        nxt = torch.where(input_ids == self.x, self.eos, self.x)
        logits = F.one_hot(nxt, self.vocab).float() * 20 + self.dummy
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_generated_answers_end_at_the_eos(smol_tokenizer):
    tok = smol_tokenizer
    x = tok(' Paris')['input_ids'][0]
    model = EchoEOS(len(tok), x, tok.eos_token_id)
    assert generate_answers(model, tok, QUESTIONS[2:], 8) == ['Paris']


def test_answers_carry_no_bos_of_their_own(smol_tokenizer, bos_tokenizer):
    """The prompt opens with BOS where the tokenizer adds one; the answer
    continues it, as OpenUnlearning tokenises prompt and answer together."""
    tok = bos_tokenizer
    b = qa_batch(tok, QUESTIONS, ANSWERS, eos=True)
    for i, (q, a) in enumerate(zip(QUESTIONS, ANSWERS)):
        ids = b['input_ids'][i][b['attention_mask'][i].bool()].tolist()
        assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
        answer = b['input_ids'][i][b['answer_mask'][i].bool()]
        assert tok.decode(answer) == ' ' + a
    lp = metrics.qa.answer_logprobs(tiny_llama(vocab=len(tok)), tok,
                                    QUESTIONS, ANSWERS, eos=True)
    plain = qa_batch(smol_tokenizer, QUESTIONS, ANSWERS, eos=True)
    assert [len(x) for x in lp] == plain['target_mask'].sum(1).tolist()
