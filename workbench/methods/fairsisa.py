"""FairSISA: equalized-odds post-processing of a SISA ensemble.

Kadhe, Halimi, Rawat and Baracaldo, "FairSISA: Ensemble Post-Processing to
Improve Fairness of Unlearning in LLMs", NeurIPS 2023 SoLaR workshop,
https://arxiv.org/abs/2312.07420

SISA (`workbench.methods.sisa`) unlearns exactly by retraining one shard,
but each shard sees 1/S of the data, and a vote of weaker models can treat groups
less equally. Hardt, Price and Srebro (2016) make any predictor fair after
the fact: a randomised predictor Y~ derived from a discrete signal S (the
model's output) and the group A, with p[s, a] = P(Y~ = 1 | S = s, A = a)
chosen by a linear program so that TPR and FPR are equal across groups at
the least expected cost. Three ways to put it on an ensemble:

- `shards_then_vote`: post-process each shard's label, then vote;
- `vote_then_fair`: post-process the majority vote (signal: the vote);
- `joint`: post-process the whole vote vector V = (Y^_1, ..., Y^_S)
  (signal: the pattern v, 2^S values, or the vote count, S + 1 values).

The joint LP optimises over every predictor derived from (V, A), the other
two among them, so on the data it is fitted on it is the optimal fair
predictor of the ensemble. Fitting is an LP on counts: after a deletion
request only this is refitted, never the shards.
"""
from dataclasses import dataclass, field

import numpy as np

from ..core import WorkbenchError

VARIANTS = ('shards_then_vote', 'vote_then_fair', 'joint')


@dataclass
class FairSISAConfig:
    """How to post-process the ensemble."""
    variant: str = field(default='joint', metadata={
        'choices': VARIANTS, 'help': 'where the fairness LP goes'})
    c_fp: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'cost of a false positive'})
    c_fn: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'cost of a false negative'})
    signal: str = field(default='auto', metadata={
        'choices': ('auto', 'pattern', 'count'),
        'help': "joint: the vote vector, its count, or 'auto' (count "
                "beyond 6 shards)"})

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise WorkbenchError(f'unknown variant {self.variant!r}; choose '
                                 f'one of {", ".join(VARIANTS)}')
        if self.signal not in ('auto', 'pattern', 'count'):
            raise WorkbenchError(f"signal must be 'auto', 'pattern' or "
                                 f"'count', got {self.signal!r}")
        if self.c_fp < 0 or self.c_fn < 0 or self.c_fp + self.c_fn == 0:
            raise WorkbenchError('costs must be >= 0 and not both 0')


Config = FairSISAConfig


def majority_vote(votes):
    """SISA's aggregation: 1[sum_k Y^_k > S/2] (ties are 0)."""
    votes = np.asarray(votes)
    return (votes.sum(1) > votes.shape[1] / 2).astype(int)


@dataclass
class DerivedPredictor:
    """p[s, a] = P(Y~ = 1 | signal s, group a), fitted by `derived_predictor`."""
    table: np.ndarray  # (signals, groups)
    groups: np.ndarray  # group labels, in table order
    cost: float  # the LP's expected cost per example, on the fitting data

    def proba(self, signal, groups):
        """P(Y~ = 1) for each example."""
        idx = np.searchsorted(self.groups, groups)
        idx = np.clip(idx, 0, len(self.groups) - 1)
        unknown = self.groups[idx] != np.asarray(groups)
        if unknown.any():
            raise WorkbenchError(
                f'group {np.asarray(groups)[unknown][0].item()!r} was not in the '
                f'data the post-processing was fitted on')
        return self.table[np.asarray(signal), idx]


def derived_predictor(signal, y, groups, n_signals, c_fp=1.0, c_fn=1.0,
                      default=None):
    """Hardt et al.'s equalized-odds LP over a discrete signal.

    With q_y[s, a] = P(S = s | Y = y, A = a) and w_y[a] = P(Y = y, A = a):
      TPR_a = sum_s p[s, a] q_1[s, a],   FPR_a = sum_s p[s, a] q_0[s, a]
      min_p  sum_a c_FP w_0[a] FPR_a + c_FN w_1[a] (1 - TPR_a)
      s.t.   TPR_a = TPR_a0,  FPR_a = FPR_a0  for every group a,
             0 <= p[s, a] <= 1.
    Signal values no example of a group shows take `default[s]` (they cost
    nothing on the fitting data either way).
    """
    # memory: SciPy's LP solver only where an LP is solved
    from scipy.optimize import linprog
    signal, y = np.asarray(signal), np.asarray(y).astype(int)
    groups = np.asarray(groups)
    labels = np.unique(groups)
    n, k = len(y), len(labels)
    q = np.zeros((2, n_signals, k))  # q[y, s, a]
    w = np.zeros((2, k))  # w[y, a]
    for j, g in enumerate(labels):
        for label in (0, 1):
            sel = (groups == g) & (y == label)
            if not sel.any():
                what = 'positive' if label else 'negative'
                raise WorkbenchError(
                    f'group {g.item()!r} has no {what} examples in the data the '
                    f'post-processing is fitted on: its TPR and FPR cannot '
                    f'be estimated')
            q[label, :, j] = np.bincount(signal[sel], minlength=n_signals)
            q[label, :, j] /= sel.sum()
            w[label, j] = sel.sum() / n
    # variables x[s * k + a] = p[s, a]; TPR_a and FPR_a are rows over x
    tpr = np.zeros((k, n_signals * k))
    fpr = np.zeros((k, n_signals * k))
    for j in range(k):
        tpr[j, j::k] = q[1, :, j]
        fpr[j, j::k] = q[0, :, j]
    objective = (c_fp * w[0] @ fpr) - (c_fn * w[1] @ tpr)
    equal = np.vstack([tpr[1:] - tpr[0], fpr[1:] - fpr[0]])
    res = linprog(objective, A_eq=equal if k > 1 else None,
                  b_eq=np.zeros(len(equal)) if k > 1 else None,
                  bounds=(0, 1), method='highs')
    if res.status != 0:
        raise WorkbenchError(f'the equalized-odds LP failed: {res.message}')
    table = np.clip(res.x.reshape(n_signals, k), 0, 1)  # solver round-off
    if default is not None:
        seen = (q[0] + q[1]) > 0
        table = np.where(seen, table, np.asarray(default)[:, None])
    cost = float(res.fun + c_fn * w[1].sum())
    return DerivedPredictor(table=table, groups=labels, cost=cost)


def vote_tail(p):
    """P(sum_k B_k > S/2) for independent B_k ~ Bernoulli(p[:, k])."""
    n, s = p.shape
    dist = np.zeros((n, s + 1))  # dist[:, m] = P(m of the shards say 1)
    dist[:, 0] = 1.0
    for k in range(s):
        dist[:, 1:] = dist[:, 1:] * (1 - p[:, k:k + 1]) + \
            dist[:, :-1] * p[:, k:k + 1]
        dist[:, 0] *= 1 - p[:, k]
    return dist[:, s // 2 + 1:].sum(1)


class FairEnsemble:
    """A SISA ensemble's votes, post-processed for equalized odds."""

    def __init__(self, config=None):
        self.config = config or FairSISAConfig()
        self.predictors = []

    def _joint_signal(self, votes):
        """The vote vector as one integer: its pattern or its count."""
        s = votes.shape[1]
        mode = self.config.signal
        if mode == 'auto':
            mode = 'pattern' if s <= 6 else 'count'
        if mode == 'count':
            counts = np.arange(s + 1)
            return votes.sum(1), s + 1, (counts > s / 2).astype(float)
        patterns = np.arange(2 ** s)
        bits = (patterns[:, None] >> np.arange(s)) & 1
        return votes @ (1 << np.arange(s)), 2 ** s, majority_vote(bits)

    def fit(self, votes, y, groups):
        """Solve the LP(s) on held-out votes (n, S), labels and groups."""
        votes = np.asarray(votes).astype(int)
        c = self.config
        cost = dict(c_fp=c.c_fp, c_fn=c.c_fn)
        if c.variant == 'shards_then_vote':
            self.predictors = [
                derived_predictor(votes[:, k], y, groups, 2, **cost)
                for k in range(votes.shape[1])]
        elif c.variant == 'vote_then_fair':
            self.predictors = [derived_predictor(
                majority_vote(votes), y, groups, 2, **cost)]
        else:
            signal, n_signals, default = self._joint_signal(votes)
            self.predictors = [derived_predictor(
                signal, y, groups, n_signals, default=default, **cost)]
        self.shards = votes.shape[1]
        return self

    def proba(self, votes, groups):
        """P(Y~ = 1) of the randomised fair predictor, per example."""
        if not self.predictors:
            raise WorkbenchError('fit the post-processing first')
        votes = np.asarray(votes).astype(int)
        if votes.shape[1] != self.shards:
            raise WorkbenchError(f'fitted on {self.shards} shards, got '
                                 f'votes of {votes.shape[1]}')
        variant = self.config.variant
        if variant == 'shards_then_vote':
            per_shard = np.stack([pred.proba(votes[:, k], groups) for k, pred
                                  in enumerate(self.predictors)], axis=1)
            return vote_tail(per_shard)
        if variant == 'vote_then_fair':
            return self.predictors[0].proba(majority_vote(votes), groups)
        signal, _, _ = self._joint_signal(votes)
        return self.predictors[0].proba(signal, groups)

    def sample(self, votes, groups, seed=0):
        """One draw of the randomised predictor's labels."""
        rng = np.random.default_rng(seed)
        p = self.proba(votes, groups)
        return (rng.random(len(p)) < p).astype(int)


def hps(predictions, y, groups, c_fp=1.0, c_fn=1.0):
    """Hardt-Price-Srebro for one binary predictor (signal: its label)."""
    return derived_predictor(np.asarray(predictions).astype(int), y, groups,
                             2, c_fp=c_fp, c_fn=c_fn)


def fairlearn_hps(predictions, y, groups, new_predictions, new_groups):
    """The same post-processing by fairlearn's ThresholdOptimizer
    (equalized odds, accuracy objective; `c_FP = c_FN = 1`), for a
    cross-check: fitted on (predictions, y, groups), P(Y~ = 1) returned for
    the new predictions."""
    # memory: fairlearn and scikit-learn (about 100 MB) only for this check
    from fairlearn.postprocessing import ThresholdOptimizer
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    predictions = np.asarray(predictions).astype(int)
    if len(np.unique(predictions)) < 2:
        model = DummyClassifier(strategy='constant',
                                constant=predictions[0])
    else:  # on its own labels as the only feature it predicts them back
        model = LogisticRegression()
    model.fit(predictions[:, None], predictions)
    opt = ThresholdOptimizer(estimator=model, constraints='equalized_odds',
                             objective='accuracy_score', prefit=True,
                             predict_method='predict')
    opt.fit(predictions[:, None], y, sensitive_features=groups)
    new = np.asarray(new_predictions).astype(int)[:, None]
    return opt._pmf_predict(new, sensitive_features=new_groups)[:, 1]
