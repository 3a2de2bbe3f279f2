"""Question-answer metrics with OpenUnlearning's definitions (TOFU, MUSE),
as its code computes them (`src/evals/metrics/` of locuslab/open-unlearning).

With `eos=True` each answer ends with the end-of-sequence token, as
OpenUnlearning's answers do, and the averages below run over it too.

- answer probability: exp(-mean NLL of the answer tokens given the
  question), per question
- normalised probability (for answers with options):
  P(correct) / (P(correct) + sum of P(wrong)), each length-normalised
- Truth Ratio: TR = P_norm(wrong) / P_norm(correct), the correct answer
  paraphrased (TOFU), the wrong ones combined through their mean NLL; on
  forget data mean of min(TR, 1/TR) (closer to 1 is better), elsewhere
  mean of max(0, 1 - TR); OpenUnlearning's newer variant is the mean of
  P_norm(correct) / (P_norm(correct) + P_norm(wrong))
- Forget Quality: p-value of a two-sample KS test between the truth ratios
  of the unlearned model and of a model retrained without the forget set
- Model Utility: harmonic mean of utility numbers
- PrivLeak (MUSE, on OpenUnlearning's AUC convention, where 1 means the
  forget set looks seen): ((1 - AUC) - (1 - AUC_retrained))
  / (1 - AUC_retrained) x 100; negative when the forget set looks more
  seen than to the retrained model
"""
import numpy as np
import torch

from ..core.data import prompt_of, qa_batch  # noqa: F401 (qa_batch: the metrics read it here)
from ..core.scoring import continuation_logprobs, greedy_continue


def answer_logprobs(model, tokenizer, questions, answers, eos=False):
    """log p of each answer token given its question (tokenised as
    `qa_batch` does, with the EOS token closing each answer when `eos`),
    one 1-D tensor per (question, answer) pair; each distinct question is
    encoded once, however many answers it has."""
    end = [tokenizer.eos_token_id] if eos else []
    prompts, conts, where = {}, {}, []
    for q, a in zip(questions, answers):
        if q not in prompts:
            prompts[q] = tokenizer(prompt_of(q))['input_ids']
            conts[q] = []
        where.append((q, len(conts[q])))
        conts[q].append(tokenizer(' ' + a, add_special_tokens=False)
                        ['input_ids'] + end)
    keys = list(prompts)
    lps = continuation_logprobs(model, [prompts[q] for q in keys],
                                [conts[q] for q in keys])
    by_q = dict(zip(keys, lps))
    return [by_q[q][k] for q, k in where]


def answer_nll(model, tokenizer, questions, answers, eos=False):
    """Mean NLL per answer token of each answer given its question, (N,)
    (OpenUnlearning's `avg_loss`)."""
    return torch.stack([-lp.mean() for lp in answer_logprobs(
        model, tokenizer, questions, answers, eos)])


def answer_perplexity(model, tokenizer, questions, answers):
    """Perplexity of the answer tokens given their questions, over all
    answers' tokens together."""
    lp = torch.cat(answer_logprobs(model, tokenizer, questions, answers))
    return float(torch.exp(-lp.mean()))


def answer_probability(model, tokenizer, questions, answers, eos=False):
    """exp(-mean answer NLL) per question, (N,) (OpenUnlearning's `prob`;
    its `probability` metric is their mean)."""
    return torch.exp(-answer_nll(model, tokenizer, questions, answers, eos))


def option_nlls(model, tokenizer, questions, correct, wrong, eos=False):
    """Mean answer NLL of each question's correct answer, (N,), and of its
    wrong answers, (N, k); `wrong` holds k wrong answers per question."""
    k = len(wrong[0])
    if any(len(w) != k for w in wrong):
        raise ValueError('every question needs as many wrong answers')
    right = answer_nll(model, tokenizer, questions, correct, eos)
    bad = answer_nll(model, tokenizer,
                     [q for q in questions for _ in range(k)],
                     [a for w in wrong for a in w], eos)
    return right, bad.view(len(questions), k)


def normalised_probability(model, tokenizer, questions, correct, wrong,
                           eos=False, nlls=None):
    """OpenUnlearning's `probability_w_options`, per question:
    P(correct) / (P(correct) + sum of P(wrong) + 1e-10), each P
    length-normalised (TOFU's real-authors and world-facts probability).
    `nlls`: `option_nlls` of the same answers, if at hand."""
    right, bad = nlls or option_nlls(model, tokenizer, questions, correct,
                                     wrong, eos)
    right, wrong_sum = torch.exp(-right), torch.exp(-bad).sum(1)
    return (right / (right + wrong_sum + 1e-10)).numpy()


def truth_ratio_probs(model, tokenizer, questions, correct, wrong, eos=False,
                      nlls=None):
    """(P_norm(correct), P_norm(wrong)) of each question, as numpy arrays:
    the wrong answers combined as exp(-their mean avg NLL), as
    OpenUnlearning averages their losses before the exponential. `nlls`:
    `option_nlls` of the same answers, if at hand."""
    right, bad = nlls or option_nlls(model, tokenizer, questions, correct,
                                     wrong, eos)
    return torch.exp(-right).numpy(), torch.exp(-bad.mean(1)).numpy()


def truth_ratios(model, tokenizer, qa, eos=False):
    """Raw truth ratio P_norm(perturbed) / P_norm(paraphrased) of each Q&A
    item (TOFU's items, with paraphrased and perturbed answers), as a
    numpy array."""
    right, wrong = truth_ratio_probs(
        model, tokenizer, [r['question'] for r in qa],
        [r['paraphrased_answer'] for r in qa],
        [r['perturbed_answers'] for r in qa], eos)
    return wrong / (right + 1e-10)


def truth_ratio(ratios, forget):
    """Aggregate truth ratios: min(TR, 1/TR) on forget data, else
    max(0, 1 - TR); higher is better for both (OpenUnlearning's
    `closer_to_1_better` and `true_better`)."""
    ratios = np.asarray(ratios)
    if forget:
        return float(np.mean(np.minimum(ratios, 1 / (ratios + 1e-10))))
    return float(np.mean(np.maximum(0, 1 - ratios)))


def truth_ratio_prob_mean(right, wrong):
    """OpenUnlearning's newer truth ratio (its `prob_mean` aggregator):
    the mean of P_norm(correct) / (P_norm(correct) + P_norm(wrong)), in
    [0, 1]; 0.5 when the model cannot tell the true answer from the wrong
    ones."""
    right, wrong = np.asarray(right), np.asarray(wrong)
    return float(np.mean(right / (right + wrong + 1e-10)))


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
    """MUSE's PrivLeak as OpenUnlearning computes it, in %: the relative
    gap of 1 - AUC (MUSE reports its AUCs that way round) to the retrained
    model's. 0 is the oracle; an under-unlearned model, whose forget set
    looks seen (AUC near 1), is near -100."""
    score, ref = 1 - auc_unlearned, 1 - auc_retrained
    return (score - ref) / (ref + 1e-10) * 100


def generate_answers(model, tokenizer, questions, max_new_tokens=32):
    """Greedy answers to questions in the Q&A template, cut at the
    end-of-sequence token (as OpenUnlearning cuts them) and at a newline;
    a row stops decoding once its answer is complete, which does not
    change the answer."""
    eos = tokenizer.eos_token_id

    def until_eos(tokens):
        tokens = list(tokens)
        return tokens[:tokens.index(eos)] if eos in tokens else tokens

    def complete(tokens):
        return torch.tensor([
            eos in row or '\n' in tokenizer.decode(
                row, skip_special_tokens=True).lstrip()
            for row in tokens.tolist()])

    prompts = [tokenizer(prompt_of(q))['input_ids'] for q in questions]
    gens = greedy_continue(model, prompts, [max_new_tokens] * len(prompts),
                           tokenizer.pad_token_id, stop=complete)
    texts = [tokenizer.decode(until_eos(g), skip_special_tokens=True)
             for g in gens]
    return [t.strip().split('\n')[0].strip() for t in texts]


def rouge_l_recall(predictions, references, measure='recall'):
    """ROUGE-L recall (or `measure`: 'precision', 'fmeasure') of each
    prediction against its reference."""
    from rouge_score import rouge_scorer  # memory: nltk under it
    scorer = rouge_scorer.RougeScorer(['rougeL'], use_stemmer=True)
    return np.array([getattr(scorer.score(r, p)['rougeL'], measure)
                     for p, r in zip(predictions, references)])


def multiple_choice_scores(model, tokenizer, items):
    """Two numbers per question from one scoring of every choice given the
    question, as numpy arrays (N,):
    - hit: whether the correct choice has the highest total log-likelihood
      (lm-eval-harness's `acc`);
    - probability: the correct choice's share of the choices'
      length-normalised probabilities (OpenUnlearning's
      `probability_w_options`, as `normalised_probability`, here without
      the end-of-sequence token, as lm-eval-harness scores choices).
    The probability moves with every question's likelihoods, where a hit
    moves only when the ranking flips, so a small change in what a model
    knows shows in its mean long before it shows in the accuracy."""
    qs = [it['question'] for it in items for _ in it['choices']]
    cs = [c for it in items for c in it['choices']]
    lps = answer_logprobs(model, tokenizer, qs, cs)
    hits, right, wrong, i = [], [], [], 0
    for it in items:
        group, label = lps[i:i + len(it['choices'])], it['label']
        i += len(group)
        total = torch.stack([lp.sum() for lp in group])
        hits.append(int(total.argmax()) == label)
        nll = torch.stack([-lp.mean() for lp in group]).float()
        right.append(nll[label])
        wrong.append(torch.cat([nll[:label], nll[label + 1:]]))
    # the formula of `normalised_probability`, on the NLLs just computed
    probs = normalised_probability(model, tokenizer, None, None, None,
                                   nlls=(torch.stack(right),
                                         torch.stack(wrong)))
    return np.array(hits, dtype=float), probs


def multiple_choice(model, tokenizer, items):
    """{'accuracy', 'probability'}: the means of `multiple_choice_scores`
    over `items`."""
    hits, probs = multiple_choice_scores(model, tokenizer, items)
    return {'accuracy': float(hits.mean()),
            'probability': float(probs.mean())}


def world_facts_metrics(model, tokenizer, items):
    """`world_facts/accuracy` and `world_facts/probability` (the means of
    `multiple_choice_scores`), the utility every notebook reports."""
    return {f'world_facts/{k}': v
            for k, v in multiple_choice(model, tokenizer, items).items()}


def multiple_choice_accuracy(model, tokenizer, items):
    """Share of questions whose correct choice has the highest total
    log-likelihood given the question (lm-eval-harness's `acc`)."""
    return float(multiple_choice_scores(model, tokenizer, items)[0].mean())
