"""Notebook 03, Knowledge Unlearning (Jang et al., ACL 2023): gradient
ascent until the forget set is below the forgetting thresholds, and the
paper's sequential unlearning (the forget set in chunks, one after
another). The set-up is the implanted people (`people`).
"""
from . import people


def subset(tokens, idx):
    """Rows `idx` of tokenised data (any dict of tensors)."""
    return {k: v[idx] for k, v in tokens.items()}


def _chunk(n, chunks, c):
    """Rows of chunk `c` of `n` rows in `chunks` parts."""
    return list(range(c * n // chunks, (c + 1) * n // chunks))


def sequential_unlearning(setup, method, config, chunks, callbacks=(),
                          guard_bound=float('inf'), progress=True,
                          retain=True, after_chunk=None):
    """Jang et al.'s sequential unlearning: the forget set in `chunks`
    parts, each unlearned until it is below the thresholds (or the step
    budget ends), one after another on the same model. Returns the model
    and the TrainResult of each chunk.

    `after_chunk(model, c, result)`, if given, runs after chunk `c`, while
    the model is as that chunk left it. Chunk 0 holds the first rows of the
    forget set, so it is also a run on a smaller forget set of its own.
    """
    n = setup.tokens['forget']['input_ids'].shape[0]
    model, results = people.trainable(setup), []
    for c in range(chunks):
        results.append(people.run_until_forgotten(
            setup, model, method, config,
            forget=subset(setup.tokens['forget'], _chunk(n, chunks, c)),
            callbacks=callbacks, guard_bound=guard_bound, progress=progress,
            retain=retain))
        if after_chunk is not None:
            after_chunk(model, c, results[-1])
    return model, results


def measure_sequential(setup, model, results):
    """`measure` after `sequential_unlearning`: the last chunk's EL_n comes
    from its last evaluation (of this very model), so only the earlier
    chunks' EL_n is measured again; EL_n is a mean over sequences."""
    n = setup.tokens['forget']['input_ids'].shape[0]
    last = people.final_metrics(results[-1]) or {}
    el = f'forget/{setup.el_key}'
    if el not in last:
        return people.measure(setup, model)
    rows = _chunk(n, len(results), len(results) - 1)
    earlier = list(range(rows[0]))
    mean = last[el] * len(rows)
    if earlier:
        mean += people.forget_el(setup, model, subset(setup.tokens['forget'],
                                               earlier)) * len(earlier)
    return people.measure(setup, model, known={el: mean / n})


def sequential_beats_batch(before, batch, sequential, thresholds,
                           bound=people.EVERYDAY_BOUND):
    """Jang et al.'s claim that chunks preserve the model better than the
    whole set at once, judged in models that still work: a run counts as
    forgotten when it is below the thresholds with everyday-text
    perplexity within `bound` times the implanted model's (`before`).
    The chunks win where they forgot and the whole set at once did not,
    or where both did and the chunks kept no less `world_facts`
    probability than the measure resolves (`people.kept_knowledge`) and a
    lower everyday-text perplexity (knowledge and language: either alone
    moves by less than its noise).

    Returns (holds, batch forgot, chunks forgot)."""
    gen = 'general/perplexity'

    def forgot(m):
        return (people.below_thresholds(m, thresholds) is not None
                and people.still_works(before, m, bound))
    batch_ok, seq_ok = forgot(batch), forgot(sequential)
    kept_more = (people.kept_knowledge(sequential, batch)
                 and sequential[gen] < batch[gen])
    return seq_ok and (not batch_ok or kept_more), batch_ok, seq_ok

