"""S-MA, S-EL and span bookkeeping: each against a hand computation."""
import torch

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

    from workbench.experiments import selective_forgetting
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
