"""S-MA, S-EL, span bookkeeping and the two-stage annotation."""
import pytest
import torch

from workbench.core import data
from workbench.experiments import annotate
from workbench.metrics import (char_precision_recall,
                               selective_extraction_likelihood,
                               selective_memorization_accuracy, span_mask)
from workbench.metrics.spans import runs


def test_span_mask_maps_characters_to_tokens(smol_tokenizer):
    text = 'Peter Fisher was born on May 24, 1960 in Sullivanport.'
    start = text.index('May')
    mask = span_mask(smol_tokenizer, [text], [[[start, start + 12]]], 20)
    ids = smol_tokenizer(text)['input_ids']
    picked = smol_tokenizer.decode([ids[t] for t in mask[0].nonzero()
                                    .flatten().tolist()])
    assert picked.strip() == 'May 24, 1960'
    assert runs(mask[0]) == [(mask[0].nonzero()[0].item(),
                              mask[0].nonzero()[-1].item() + 1)]


def test_s_ma_and_s_el_by_hand(successor):
    # 0..11 is memorised by the successor model, except where broken
    ids = torch.arange(12)[None].clone()
    ids[0, 8] = 40  # the model predicts 8 here: one miss inside span 2
    am = torch.ones_like(ids)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 2:5] = True  # span 1: 2, 3, 4 (all predicted)
    mask[0, 7:10] = True  # span 2: 7, 40, 9 (40 and 9 missed)
    sma = selective_memorization_accuracy(successor, ids, am, mask)
    assert abs(sma.item() - 4 / 6) < 1e-6
    # span 1 is reproduced (OVERLAP_2 = 1); from 0..6 the model continues
    # 7, 8, 9: of its bigrams (7,8), (8,9) none is in {(7,40), (40,9)}
    sel = selective_extraction_likelihood(successor, ids, am, mask, n=2)
    assert abs(sel.item() - 0.5) < 1e-6
    # spans shorter than n are skipped; none left scores 0
    short = torch.zeros_like(mask)
    short[0, 3] = True
    assert selective_extraction_likelihood(successor, ids, am, short,
                                           n=2).item() == 0.0


def test_s_el_equals_one_generation_per_span(tiny):
    # a real attention model, padding, spans where the argmax hits and not
    from workbench.metrics import greedy_continue, overlap
    torch.manual_seed(2)
    ids = torch.randint(1, 64, (3, 20))
    am = torch.ones_like(ids)
    am[1, 14:] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 3:6] = mask[:, 9:13] = True
    mask[0, 15:19] = True
    got = selective_extraction_likelihood(tiny, ids, am, mask, n=2)
    want = []
    for b in range(3):
        real = int(am[b].sum())
        scores = [overlap(greedy_continue(tiny, [ids[b, :s].tolist()],
                                          [e - s])[0],
                          ids[b, s:e].tolist(), 2)
                  for s, e in runs(mask[b, :real]) if e - s >= 2]
        want.append(sum(scores) / len(scores))
    assert got.tolist() == want


def test_s_el_waits_for_s_ma_at_its_threshold(tiny):
    from types import SimpleNamespace

    from workbench.experiments import knowledge_unlearning, selective_forgetting
    from workbench.experiments import people as experiment
    ids = torch.randint(1, 64, (2, 12))
    forget = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 4:8] = True
    setup = SimpleNamespace(tokens={'forget': forget},
                            thresholds={'MA': 0.0})
    out = selective_forgetting.span_quick_metrics(setup, tiny, mask, 2,
                                        thresholds={'S-MA': -1.0})
    assert 'forget/S-MA' in out and 'forget/S-EL_2' not in out
    out = selective_forgetting.span_quick_metrics(setup, tiny, mask, 2,
                                        thresholds={'S-MA': 1.0})
    assert 'forget/S-EL_2' in out


def test_char_precision_recall():
    p, r = char_precision_recall([[0, 5]], [[0, 5], [10, 15]], 20)
    assert (p, r) == (1.0, 0.5)
    p, r = char_precision_recall([[0, 10]], [[0, 5]], 20)
    assert (p, r) == (0.5, 1.0)


def test_rules_find_the_people_details():
    row = data.people('forget', 1)[0]
    found = {row['text'][s:e] for s, e, _ in annotate.rule_spans(
        row['text'])}
    assert {'Peter Fisher', 'May 24, 1960', 'juancampos@hotmail.com',
            '489-241-1578', '6593 Ramos Pike'} <= found
    assert 'He' not in found and 'May' not in found


def test_rule_annotation_is_precise_on_the_people(cache):
    rows = data.people('unseen', 10)
    res = annotate.annotate([r['text'] for r in rows], progress=False)
    pr = [char_precision_recall(s, r['spans'], len(r['text']))
          for s, r in zip(res['spans'], rows)]
    assert min(p for p, _ in pr) > 0.95
    assert sum(r for _, r in pr) / len(pr) > 0.75
    assert res['report']['model'] == 'rules'


def test_llm_annotation_runs_both_stages_and_caches(cache, tiny_model_dir,
                                                    smol_tokenizer):
    from workbench.core.models import load_causal_lm
    model, tok = load_causal_lm(tiny_model_dir)
    texts = [r['text'] for r in data.people('forget', 2)]
    res = annotate.annotate(texts, model, tok, 'tiny', progress=False)
    rep = res['report']
    assert rep['rule_confirmed'] > 0 and rep['model'] == 'tiny'
    assert rep['llm_confirmed'] + rep['rejected'] == rep['llm_proposed']
    assert annotate.cached(texts, 'tiny')
    assert annotate.annotate(texts, model_name='tiny') == res


def test_annotation_by_name_runs_in_a_child_and_reads_its_cache(
        cache, tiny_model_dir, capfd):
    from workbench.core.models import load_causal_lm
    from workbench.core.profiles import get_profile
    texts = [r['text'] for r in data.people('forget', 2)]
    name = str(tiny_model_dir)
    res = annotate.annotate_with(texts, name, get_profile('smoke'))
    assert 'annotating' in capfd.readouterr().err  # the child's progress
    assert annotate.cached(texts, name)
    assert not list((cache / 'annotations').glob('*.job'))
    model, tok = load_causal_lm(tiny_model_dir)
    assert res == annotate.annotate(texts, model, tok, name, cache=False,
                                    progress=False)


def test_a_failing_annotator_child_is_one_line(cache, tmp_path):
    from workbench import WorkbenchError
    from workbench.core.profiles import get_profile
    with pytest.raises(WorkbenchError, match='annotating with .* failed: '
                                             '.*is not a local folder'):
        annotate.annotate_with(['Ann Lee was born in Leeds.'],
                               str(tmp_path / 'nowhere'),
                               get_profile('smoke'), progress=False)
    assert not list((cache / 'annotations').glob('*.job'))


def test_measure_after_sequential_unlearning_reuses_the_last_chunk(
        tiny, monkeypatch):
    from types import SimpleNamespace

    from workbench.experiments import knowledge_unlearning, selective_forgetting
    from workbench.experiments import people as experiment
    from workbench.core.train import TrainResult
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (4, 12), generator=g)
    tokens = {s: {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
              for s in ('forget', 'retain')}
    setup = SimpleNamespace(tokens=tokens, thresholds={'MA': 1.0},
                            profile=SimpleNamespace(el_n=2, el_stride=1),
                            el_key='EL_2', world=[], tokenizer=None)
    monkeypatch.setattr(experiment.metrics, 'multiple_choice_accuracy',
                        lambda *a: 0.0)
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

    from workbench.experiments import knowledge_unlearning, selective_forgetting
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


def test_kept_more_at_equal_forgetting():
    from workbench.experiments.selective_forgetting import kept_more_at_equal_forgetting as kept
    level = {'S-MA': 0.3}
    ours = {'retain/MA': 0.5, 'world_facts/accuracy': 0.6}

    def theirs(sma, retain, world=0.6):
        return {'forget/S-MA': sma, 'retain/MA': retain,
                'world_facts/accuracy': world}
    # the other run reached the level: utility decides
    assert kept(ours, theirs(0.3, 0.4), level, 'stopped') == (
        True, 'reached the level')
    assert not kept(ours, theirs(0.2, 0.6), level, 'stopped')[0]
    assert not kept(ours, theirs(0.2, 0.4, world=0.7), level, 'stopped')[0]
    # it did not: only the guard stopping it first counts for ours
    assert kept(ours, theirs(0.4, 0.9), level, 'diverged') == (
        True, 'met the divergence guard before the level')
    assert kept(ours, theirs(0.4, 0.1), level, 'completed') == (
        False, 'did not reach the level')
