"""Question-answer metrics with OpenUnlearning's definitions (TOFU, MUSE).

- answer probability: exp(-mean NLL of the answer tokens given the question)
- Truth Ratio: P_norm(perturbed) / P_norm(paraphrased), each the
  length-normalised probability, the perturbed ones combined through their
  mean NLL; on forget data min(TR, 1/TR) (closer to 1 is better), elsewhere
  max(0, 1 - TR)
- Forget Quality: p-value of a two-sample KS test between the truth ratios
  of the unlearned model and of a model retrained without the forget set
- Model Utility: harmonic mean of utility numbers
- PrivLeak (MUSE): (AUC_unlearned - AUC_retrained) / AUC_retrained x 100
"""
import numpy as np
import torch

from ..core.data import prompt_of, qa_batch  # noqa: F401 (qa_batch: the metrics read it here)
from ..core.scoring import continuation_logprobs, greedy_continue


def answer_logprobs(model, tokenizer, questions, answers):
    """log p of each answer token given its question (tokenised as
    `qa_batch` does), one 1-D tensor per (question, answer) pair; each
    distinct question is encoded once, however many answers it has."""
    prompts, conts, where = {}, {}, []
    for q, a in zip(questions, answers):
        if q not in prompts:
            prompts[q] = tokenizer(prompt_of(q))['input_ids']
            conts[q] = []
        where.append((q, len(conts[q])))
        conts[q].append(tokenizer(' ' + a)['input_ids'])
    keys = list(prompts)
    lps = continuation_logprobs(model, [prompts[q] for q in keys],
                                [conts[q] for q in keys])
    by_q = dict(zip(keys, lps))
    return [by_q[q][k] for q, k in where]


def answer_nll(model, tokenizer, questions, answers):
    """Mean NLL per answer token of each answer given its question, (N,)."""
    return torch.stack([-lp.mean() for lp in answer_logprobs(
        model, tokenizer, questions, answers)])


def answer_perplexity(model, tokenizer, questions, answers):
    """Perplexity of the answer tokens given their questions, over all
    answers' tokens together."""
    lp = torch.cat(answer_logprobs(model, tokenizer, questions, answers))
    return float(torch.exp(-lp.mean()))


def answer_probability(model, tokenizer, questions, answers):
    """exp(-mean answer NLL) per question, (N,)."""
    return torch.exp(-answer_nll(model, tokenizer, questions, answers))


def truth_ratios(model, tokenizer, qa):
    """Raw truth ratio of each Q&A item (with paraphrased and perturbed
    answers), as a numpy array."""
    qs = [r['question'] for r in qa]
    correct = answer_nll(model, tokenizer, qs,
                         [r['paraphrased_answer'] for r in qa])
    k = len(qa[0]['perturbed_answers'])
    wrong = answer_nll(model, tokenizer,
                       [q for q in qs for _ in range(k)],
                       [a for r in qa for a in r['perturbed_answers']])
    wrong = wrong.view(len(qa), k).mean(1)
    return (torch.exp(-wrong) / (torch.exp(-correct) + 1e-10)).numpy()


def truth_ratio(ratios, forget):
    """Aggregate truth ratios: min(TR, 1/TR) on forget data, else
    max(0, 1 - TR); higher is better for both."""
    ratios = np.asarray(ratios)
    if forget:
        return float(np.mean(np.minimum(ratios, 1 / (ratios + 1e-10))))
    return float(np.mean(np.maximum(0, 1 - ratios)))


def forget_quality(unlearned_ratios, retrained_ratios):
    """KS-test p-value: high when the unlearned model's truth ratios are
    distributed like those of the retrained model."""
    from scipy.stats import ks_2samp  # imported where used (memory)
    return float(ks_2samp(unlearned_ratios, retrained_ratios).pvalue)


def model_utility(values):
    """Harmonic mean of utility numbers (each in [0, 1])."""
    from scipy.stats import hmean  # imported where used (memory)
    values = [max(float(v), 1e-10) for v in values]
    return float(hmean(values))


def privleak(auc_unlearned, auc_retrained):
    """MUSE's PrivLeak: relative MIA-AUC gap to the retrained model, in %."""
    return (auc_unlearned - auc_retrained) / auc_retrained * 100


def generate_answers(model, tokenizer, questions, max_new_tokens=32):
    """Greedy answers to questions in the Q&A template, cut at a newline;
    a row stops decoding once its answer is complete (a newline follows
    text), which does not change the answer."""
    def complete(tokens):
        texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
        return torch.tensor(['\n' in t.lstrip() for t in texts])

    prompts = [tokenizer(prompt_of(q))['input_ids'] for q in questions]
    gens = greedy_continue(model, prompts, [max_new_tokens] * len(prompts),
                           tokenizer.pad_token_id, stop=complete)
    texts = [tokenizer.decode(g, skip_special_tokens=True) for g in gens]
    return [t.strip().split('\n')[0].strip() for t in texts]


def rouge_l_recall(predictions, references, measure='recall'):
    """ROUGE-L recall (or `measure`: 'precision', 'fmeasure') of each
    prediction against its reference."""
    from rouge_score import rouge_scorer  # memory: nltk under it
    scorer = rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)
    return np.array([getattr(scorer.score(r, p)['rougeL'], measure)
                     for p, r in zip(predictions, references)])


def multiple_choice_accuracy(model, tokenizer, items):
    """Share of questions whose correct choice has the highest total
    log-likelihood given the question (lm-eval-harness's `acc`)."""
    qs = [it['question'] for it in items for _ in it['choices']]
    cs = [c for it in items for c in it['choices']]
    total = [lp.sum().item() for lp in answer_logprobs(model, tokenizer,
                                                        qs, cs)]
    correct, i = 0, 0
    for it in items:
        k = len(it['choices'])
        scores = total[i:i + k]
        correct += int(scores.index(max(scores)) == it['label'])
        i += k
    return correct / len(items)
