"""Knowledge Unlearning (Jang et al.): sequential unlearning's bookkeeping, and
notebook 03 headless on the smoke profile, where the paper's effects must show
in its record."""
import pytest
import torch


@pytest.mark.notebooks
def test_gradient_ascent_reaches_the_thresholds(smoke_record):
    rec = smoke_record('03_knowledge_unlearning')
    m, thr = rec['metrics'], rec['thresholds']
    # the implanted model knew the forget letters beyond unseen ones (whose
    # templates it learned with them: their MA is high)
    assert m['forget/MA']['before'] > thr['MA'] + 0.15
    assert m['forget/EL_10']['before'] > 1.5 * thr['EL_10']
    # full-batch gradient ascent brought both below the thresholds ...
    assert m['forget/MA']['after'] <= thr['MA']
    assert m['forget/EL_10']['after'] <= thr['EL_10']
    # ... within the step budget, in a model that still works: it still
    # speaks everyday text, kept its general knowledge and most of the
    # retained letters
    assert rec['run']['status'] == 'stopped'
    gen = m['general/perplexity']
    assert gen['after'] <= 2 * gen['before']
    assert m['world_facts/probability']['after'] > \
        0.9 * m['world_facts/probability']['before']
    assert m['retain/MA']['after'] > 0.75 * m['retain/MA']['before']
    # membership inference: forget texts looked like members before
    assert m['forget/mia_auc_loss']['before'] > 0.9
    assert m['forget/mia_auc_loss']['after'] < \
        m['forget/mia_auc_loss']['before']
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims['ga_reaches_threshold'] is True
    seq = rec['sequential']
    assert seq['forget/MA'] <= thr['MA']
    # the sequential claim's verdict is its rule applied to its evidence
    from workbench.experiments import knowledge_unlearning
    before = {k: v['before'] for k, v in m.items()}
    after = {k: v['after'] for k, v in m.items()}
    assert claims['sequential_beats_batch'] == \
        knowledge_unlearning.sequential_beats_batch(before, after, seq,
                                                    thr)[0]
    sizes = {r['forget-set size']: r['steps'] for r in rec['by_size']}
    n = max(sizes)  # the whole forget set
    # size 1, the sequential run's first chunk (half the set), and the set
    assert sorted(sizes) == [1, n // 2, n]
    assert sizes[n // 2] == rec['chunks'][0]['steps']


def test_sequential_beats_batch_only_in_models_that_still_work():
    from workbench.experiments.knowledge_unlearning import (
        sequential_beats_batch)
    thr = {'MA': 0.5, 'EL_10': 0.1}
    before = {'general/perplexity': 30.0}

    def run(ma, ppl, prob):
        return {'forget/MA': ma, 'forget/EL_10': 0.05,
                'general/perplexity': ppl, 'world_facts/probability': prob}
    at_once = run(0.4, 40.0, 0.50)
    # both forgot in working models: the chunks must keep more of both
    assert sequential_beats_batch(before, at_once, run(0.4, 35.0, 0.50),
                                  thr) == (True, True, True)
    assert not sequential_beats_batch(before, at_once,
                                      run(0.4, 45.0, 0.52), thr)[0]
    assert not sequential_beats_batch(before, at_once,
                                      run(0.4, 35.0, 0.45), thr)[0]
    # a loss of knowledge under what the measure resolves (0.03) is none
    assert sequential_beats_batch(before, at_once, run(0.4, 35.0, 0.49),
                                  thr)[0]
    # chunks that forgot only by breaking the model (past 2 x 30) lose
    assert sequential_beats_batch(before, at_once, run(0.4, 61.0, 0.6),
                                  thr) == (False, True, False)
    # chunks that did not forget lose, however much they kept
    assert not sequential_beats_batch(before, at_once,
                                      run(0.6, 31.0, 0.6), thr)[0]
    # the whole set broke the model, the chunks did not: the chunks win
    assert sequential_beats_batch(before, run(0.4, 70.0, 0.55),
                                  run(0.4, 50.0, 0.45), thr) == (
        True, False, True)


def test_measure_after_sequential_unlearning_reuses_the_last_chunk(
        tiny, monkeypatch):
    from types import SimpleNamespace

    from workbench.experiments import knowledge_unlearning
    from workbench.experiments import people as experiment
    from workbench.core.train import TrainResult
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (4, 12), generator=g)
    tokens = {s: {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
              for s in ('forget', 'retain')}
    setup = SimpleNamespace(tokens=tokens, thresholds={'MA': 1.0},
                            profile=SimpleNamespace(el_n=2, el_stride=1),
                            el_key='EL_2', world=[], tokenizer=None)
    monkeypatch.setattr(experiment.metrics, 'world_facts_metrics',
                        lambda *a: {'world_facts/accuracy': 0.0})
    last = experiment.quick_metrics(
        setup, tiny, knowledge_unlearning.subset(tokens['forget'], [2, 3]))
    results = [TrainResult('stopped', 1), TrainResult('stopped', 1, events=[
        {'step': 1, 'kind': 'eval', **last}])]
    calls = []
    el = experiment.forget_el
    monkeypatch.setattr(experiment, 'forget_el', lambda s, m, f=None,
                        **k: calls.append(f['input_ids'].shape[0])
                        or el(s, m, f, **k))
    out = knowledge_unlearning.measure_sequential(setup, tiny, results)
    assert calls == [2]  # only the first chunk measured again
    whole = el(setup, tiny)
    assert out['forget/EL_2'] == pytest.approx(whole, abs=1e-6)
    assert out['forget/MA'] == pytest.approx(experiment.quick_metrics(
        setup, tiny, el=False)['forget/MA'])
    # the last evaluation's numbers of this model are taken as they are
    known = {'forget/MA': 0.5, 'retain/MA': 0.25, 'retain/perplexity': 3.0,
             'forget/EL_2': 0.125}
    monkeypatch.setattr(experiment, 'quick_metrics', None)
    assert experiment.measure(setup, tiny, known=known) == {
        **known, 'world_facts/accuracy': 0.0}


def test_sequential_unlearning_calls_back_after_each_chunk(monkeypatch):
    from types import SimpleNamespace

    from workbench.experiments import knowledge_unlearning
    from workbench.experiments import people as experiment
    from workbench.core.train import TrainResult
    ids = torch.arange(10).view(5, 2)
    setup = SimpleNamespace(tokens={'forget': {
        'input_ids': ids, 'attention_mask': torch.ones_like(ids)}})
    model, seen = object(), []
    monkeypatch.setattr(experiment, 'trainable', lambda s: model)
    monkeypatch.setattr(
        experiment, 'run_until_forgotten', lambda s, m, meth, cfg, forget,
        **k: seen.append(('run', forget['input_ids'][:, 0].tolist()))
        or TrainResult('stopped', len(seen)))
    out, results = knowledge_unlearning.sequential_unlearning(
        setup, None, None, 2, after_chunk=lambda m, c, r: seen.append(
            ('after', c, m is model, r.steps)))
    # the first chunk holds the first rows, as a run on that many would
    assert seen == [('run', [0, 2]), ('after', 0, True, 1),
                    ('run', [4, 6, 8]), ('after', 1, True, 3)]
    assert out is model and [r.steps for r in results] == [1, 3]
