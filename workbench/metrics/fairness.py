"""Group fairness of a binary classifier, through fairlearn.

Predictions may be hard labels or, for a randomised predictor (as
equalized-odds post-processing makes), the probability of predicting 1.
Every metric is then its expectation over the predictor's coins: each
example enters twice, once predicted 1 with weight p and once predicted 0
with weight 1 - p, and fairlearn and scikit-learn weigh them exactly.

- TPR_a = P(Y^ = 1 | Y = 1, A = a),  FPR_a = P(Y^ = 1 | Y = 0, A = a)
- equalized-odds difference (fairlearn):
  EOD = max( max_a,a' |TPR_a - TPR_a'|, max_a,a' |FPR_a - FPR_a'| )
- average odds difference (AIF360), for groups 0 and 1:
  AOD = 1/2 [ (FPR_1 - FPR_0) + (TPR_1 - TPR_0) ]
"""
import numpy as np

from ..core import WorkbenchError


def _expanded(y, pred, groups):
    """Rows for the expectation: (y, 1, p) and (y, 0, 1 - p) per example."""
    y = np.asarray(y).astype(int)
    p = np.asarray(pred, dtype=float)
    groups = np.asarray(groups)
    if not (len(y) == len(p) == len(groups)):
        raise WorkbenchError(f'labels ({len(y)}), predictions ({len(p)}) and '
                             f'groups ({len(groups)}) differ in length')
    if len(y) == 0:
        raise WorkbenchError('no examples to measure fairness on')
    if p.min() < -1e-9 or p.max() > 1 + 1e-9:
        raise WorkbenchError('predictions must be labels or probabilities '
                             'in [0, 1]')
    p = p.clip(0, 1)
    ones, zeros = np.ones_like(y), np.zeros_like(y)
    return (np.concatenate([y, y]), np.concatenate([ones, zeros]),
            np.concatenate([groups, groups]), np.concatenate([p, 1 - p]))


def group_rates(y, pred, groups):
    """Per-group TPR, FPR, accuracy and size, as a pandas DataFrame."""
    # memory: fairlearn and scikit-learn only for the fairness metrics
    from fairlearn.metrics import (MetricFrame, count, false_positive_rate,
                                   true_positive_rate)
    from sklearn.metrics import accuracy_score
    yy, pp, gg, w = _expanded(y, pred, groups)
    weighted = {'sample_weight': w}
    frame = MetricFrame(
        metrics={'TPR': true_positive_rate, 'FPR': false_positive_rate,
                 'accuracy': accuracy_score, 'n': count},
        y_true=yy, y_pred=pp, sensitive_features=gg,
        sample_params={'TPR': weighted, 'FPR': weighted,
                       'accuracy': weighted})
    table = frame.by_group
    table['n'] = (table['n'] // 2).astype(int)
    return table


def fairness_report(y, pred, groups):
    """Accuracy, balanced accuracy, EOD, AOD and per-group TPR/FPR."""
    # memory: as above
    from fairlearn.metrics import equalized_odds_difference
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    yy, pp, gg, w = _expanded(y, pred, groups)
    rates = group_rates(y, pred, groups)
    out = {
        'accuracy': float(accuracy_score(yy, pp, sample_weight=w)),
        'balanced_accuracy': float(
            balanced_accuracy_score(yy, pp, sample_weight=w)),
        'equalized_odds_difference': float(equalized_odds_difference(
            yy, pp, sensitive_features=gg, sample_weight=w)),
    }
    if len(rates) == 2:
        g0, g1 = rates.index
        out['average_odds_difference'] = float(
            (rates.loc[g1, 'FPR'] - rates.loc[g0, 'FPR']
             + rates.loc[g1, 'TPR'] - rates.loc[g0, 'TPR']) / 2)
    for g, row in rates.iterrows():
        out[f'TPR[{g}]'] = float(row['TPR'])
        out[f'FPR[{g}]'] = float(row['FPR'])
    return out
