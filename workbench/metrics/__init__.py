"""Metrics, as plain functions of a model and token ids.

Each is implemented as its paper (or OpenUnlearning) defines it; see the
docstrings for the formulas. They import only the core; the scoring they
share with the methods' losses (token statistics, KL, memorization
accuracy, greedy continuation) is `workbench.core.scoring`, re-exported
here.
"""
from ..core.scoring import token_stats
from .extraction import (exact_memorization, extraction_likelihood,
                         extraction_likelihood_naive, extraction_strength,
                         forgetting_thresholds, greedy_continue,
                         memorization_accuracy, overlap)
from .canary import exposure, exposures, extraction
from .divergence import lpd_pdlp, token_jsd, token_kl
from .likelihood import (mia_auc, mia_aucs, mia_scores, perplexity,
                         sequence_nll)
from .qa import (answer_probability, forget_quality, generate_answers,
                 model_utility, multiple_choice, multiple_choice_accuracy,
                 multiple_choice_scores, normalised_probability, privleak, rouge_l_recall,
                 truth_ratio, truth_ratio_prob_mean, truth_ratio_probs,
                 truth_ratios, world_facts_metrics)
from .spans import (char_precision_recall, selective_extraction_likelihood,
                    selective_memorization_accuracy, span_mask)

__all__ = [
    'answer_probability', 'char_precision_recall', 'exact_memorization',
    'exposure', 'exposures', 'extraction', 'extraction_likelihood',
    'extraction_likelihood_naive', 'extraction_strength', 'forget_quality',
    'forgetting_thresholds', 'generate_answers', 'greedy_continue',
    'lpd_pdlp', 'memorization_accuracy', 'mia_auc',
    'mia_aucs', 'mia_scores', 'model_utility', 'multiple_choice',
    'multiple_choice_accuracy', 'multiple_choice_scores', 'normalised_probability', 'overlap', 'perplexity', 'privleak',
    'rouge_l_recall',
    'selective_extraction_likelihood', 'selective_memorization_accuracy',
    'sequence_nll', 'span_mask', 'token_jsd', 'token_kl', 'token_stats',
    'truth_ratio', 'truth_ratio_prob_mean', 'truth_ratio_probs',
    'truth_ratios', 'world_facts_metrics',
]
