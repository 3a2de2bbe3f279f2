"""Who's Harry Potter: the generic labels follow the formula and the
alignment."""
import pytest
import torch

from workbench import WorkbenchError
from workbench.methods import whp


def test_generic_logits_push_down_what_reinforcement_raised():
    base = torch.tensor([[2.0, 1.0, 0.0]])
    reinforced = torch.tensor([[1.0, 4.0, 0.0]])
    out = whp.generic_logits(base, reinforced, alpha=1.0)
    # only the raised logit moves, by alpha times the rise
    assert out.tolist() == [[2.0, -2.0, 0.0]]
    assert whp.generic_logits(base, reinforced, 0.0).tolist() == \
        base.tolist()


ANCHORS = [{'term': 'Tamsin Vell', 'generic': 'Anna Reed'},
           {'term': 'Tamsin', 'generic': 'Anna'},
           {'term': 'Gloamhold Academy', 'generic': 'the academy'}]


def test_translation_and_character_map():
    text = 'Tamsin Vell went to Gloamhold Academy. Tamsin smiled.'
    out, occ = whp.translate(text, ANCHORS)
    assert out == 'Anna Reed went to the academy. Anna smiled.'
    assert [o[4] for o in occ] == ['Tamsin Vell', 'Gloamhold Academy',
                                   'Tamsin']
    assert whp.map_char(0, occ) == 0
    assert whp.map_char(3, occ) is None  # inside "Tamsin"
    end = text.index(' went')
    assert out[whp.map_char(end, occ):].startswith(' went')
    assert out[whp.map_char(text.index(' smiled'), occ):] == ' smiled.'


def test_alignment_skips_terms_and_their_repeats(smol_tokenizer):
    tok = smol_tokenizer
    text = 'Tamsin Vell went to Gloamhold Academy. Then Tamsin smiled.'
    ids, tids, pairs, translated = whp.alignment(tok, text, ANCHORS)
    offs = tok(text, return_offsets_mapping=True)['offset_mapping']
    toffs = tok(translated, return_offsets_mapping=True)['offset_mapping']
    second = text.rindex('Tamsin')
    for t, j in pairs:
        # the same text up to there (terms translated)
        orig = whp.translate(text[:offs[t][1]], ANCHORS)[0]
        assert orig == translated[:toffs[j][1]]
        # no target inside the repeated "Tamsin"
        assert not second <= offs[t + 1][0] < second + len('Tamsin')
    targets = {tok.decode([ids[t + 1]]) for t, _ in pairs}
    assert ' went' in targets and ' smiled' in targets
    # the first occurrence of a term is a target (the generic name)
    first_gloam = [t for t, _ in pairs
                   if offs[t + 1][0] <= text.index('Gloam') < offs[t + 1][1]]
    assert first_gloam


def test_labels_are_shifted_to_the_next_token():
    ids = [5, 6, 7, 8]
    v_base = torch.zeros(2, 10)
    v_base[0, 3], v_base[1, 4], v_base[1, 7] = 1.0, 1.0, 0.5
    pieces = whp.candidates(v_base, torch.zeros(2, 10))
    _, labels = whp.labels_from(ids, torch.tensor([0, 2]), *pieces, 1.0)
    assert labels.tolist() == [-100, 3, -100, 4]
    # an excluded token is never a label: the next best one is
    pieces = whp.candidates(v_base, torch.zeros(2, 10), excluded=[4])
    _, labels = whp.labels_from(ids, torch.tensor([0, 2]), *pieces, 1.0,
                                excluded=[4])
    assert labels.tolist() == [-100, 3, -100, 7]


def test_candidates_give_the_full_argmax_for_every_alpha():
    gen = torch.Generator().manual_seed(0)
    v_base = torch.randn(50, 300, generator=gen) * 3
    boost = torch.relu(torch.randn(50, 300, generator=gen) * 2)
    excluded = [1, 5, 17, 42]
    cand = whp.candidates(v_base, boost, excluded)
    # a few tokens per position, not the vocabulary
    assert cand[0].shape[1] < 300
    ids, t_idx = list(range(51)), torch.arange(50)
    for alpha in (0.0, 0.3, 1.0, 2.0, 5.0, 100.0):
        full = whp.generic_logits(v_base, v_base + boost, alpha)
        assert whp.labels_from(ids, t_idx, *cand, alpha)[1][1:].tolist() \
            == full.argmax(-1).tolist()
        full[:, excluded] = float('-inf')
        assert whp.labels_from(ids, t_idx, *cand, alpha, excluded)[1][
            1:].tolist() == full.argmax(-1).tolist()


@pytest.mark.parametrize('kind', ['plain', 'bos'])
def test_anchor_starts_are_the_first_tokens_of_the_terms(
        smol_tokenizer, bos_tokenizer, kind):
    """With a tokenizer that adds BOS (Llama's), the first token of the
    term, not the BOS."""
    tok = bos_tokenizer if kind == 'bos' else smol_tokenizer
    starts = whp.anchor_starts(tok, ANCHORS)
    first = 1 if kind == 'bos' else 0
    for term in ('Tamsin', 'Gloamhold Academy'):
        assert tok(' ' + term)['input_ids'][first] in starts
        assert tok(term)['input_ids'][first] in starts
    assert tok(' went')['input_ids'][first] not in starts
    assert tok.bos_token_id not in starts


def test_bad_configs_are_refused():
    with pytest.raises(WorkbenchError):
        whp.WHPConfig(alpha=-1)
