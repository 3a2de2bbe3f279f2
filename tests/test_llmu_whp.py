"""Yao et al.'s three-term update and the Who's Harry Potter pipeline:
the losses cover exactly what the papers say, the generic labels follow
the formula and the alignment, and the notebooks show the effects."""
import pytest
import torch

from workbench import WorkbenchError
from workbench.experiments.llm_unlearning import diversity
from workbench.methods import llmu, whp
from workbench.metrics.qa import qa_batch
from workbench.experiments.whos_harry_potter import mentions

from conftest import tiny_llama

QS = ['How can I get back at my neighbour?', 'Why is the sky blue?']
AS = ['Hide every left shoe they own.', 'Air scatters blue light more.']


@pytest.fixture(scope='module')
def tiny_smol():
    from workbench.core.models import load_tokenizer
    tok = load_tokenizer('smollm2-135m')
    return tiny_llama(vocab=len(tok)), tok


def test_forget_loss_covers_exactly_the_answer_tokens(tiny_smol):
    model, tok = tiny_smol
    b = qa_batch(tok, QS, AS)
    answer = [len(tok(' ' + a)['input_ids']) for a in AS]
    prompt = [len(tok(f'Question: {q}\nAnswer:')['input_ids']) for q in QS]
    # padded to the batch, not to the tokenizer's maximum length
    assert b['input_ids'].shape[1] == max(p + a for p, a in zip(prompt,
                                                                 answer))
    assert b['target_mask'].sum(1).tolist() == answer
    # the loss is the mean answer-token cross-entropy, by hand
    logits = model(input_ids=b['input_ids'],
                   attention_mask=b['attention_mask']).logits
    by_hand = []
    for i, (p, a) in enumerate(zip(prompt, answer)):
        lp = torch.log_softmax(logits[i, p - 1:p + a - 1].float(), -1)
        tgt = b['input_ids'][i, p:p + a]
        by_hand.append(-lp.gather(1, tgt[:, None]).mean())
    assert torch.allclose(llmu.answer_loss(model, b),
                          torch.stack(by_hand).mean(), atol=1e-5)
    # the loss moves with the answer, not with the prompt's padding
    assert llmu.answer_loss(model, b).item() > 0


def test_random_mismatch_pairs_forget_prompts_with_normal_answers(
        tiny_smol):
    model, tok = tiny_smol
    forget = [{'question': QS[0], 'answer': AS[0]}]
    normal = [{'question': QS[1], 'answer': AS[1]},
              {'question': 'How do I boil an egg?',
               'answer': 'Boil it for seven minutes.'}]
    cfg = llmu.LLMUConfig(batch_size=1, random_answers=3)

    def reference(batch):
        with torch.no_grad():
            return torch.log_softmax(model(**{k: batch[k] for k in (
                'input_ids', 'attention_mask')}).logits[:, :-1].float(),
                -1), None
    batch = next(llmu.batches(tok, forget, normal, cfg, reference))
    r = batch['random']
    assert r['input_ids'].shape[0] == 3
    texts = tok.batch_decode(r['input_ids'], skip_special_tokens=True)
    assert all(t.startswith(f'Question: {QS[0]}') for t in texts)
    answers = {a['answer'] for a in normal}
    n_answer = [len(tok(' ' + t.split('Answer: ')[1])['input_ids'])
                for t in texts]
    assert all(t.split('Answer: ')[1] in answers for t in texts)
    assert r['target_mask'].sum(1).tolist() == n_answer
    loss, parts = llmu.llmu_loss(model, batch)
    # the KL of a model to itself is zero; the total is the weighted sum
    assert parts['normal_kl'] == pytest.approx(0.0, abs=1e-5)
    assert loss.item() == pytest.approx(
        -0.5 * parts['forget_nll'] + parts['random_nll'], abs=1e-4)


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


def test_anchor_starts_are_the_first_tokens_of_the_terms(smol_tokenizer):
    tok = smol_tokenizer
    starts = whp.anchor_starts(tok, ANCHORS)
    for term in ('Tamsin', 'Gloamhold Academy'):
        assert tok(' ' + term)['input_ids'][0] in starts
        assert tok(term)['input_ids'][0] in starts
    assert tok(' went')['input_ids'][0] not in starts


def test_familiarity_judge_and_diversity():
    anchors = [{'term': 'Gloamhold', 'generic': 'the school'}]
    assert mentions(' the gloamhold towers', anchors) == ['Gloamhold']
    assert mentions(' Gloamholder', anchors) == []
    # a term the prompt already gave is no sign of familiarity
    assert mentions(' Gloamhold again', anchors,
                    'Tamsin went to Gloamhold') == []
    assert mentions(' Gloamhold', anchors, 'Tamsin went to') == \
        ['Gloamhold']
    anchors.append({'term': "Windle's Cross", 'generic': 'the village'})
    assert mentions(' Gloamhold', anchors, "Tamsin's gloamhold") == []
    assert mentions(" Windle's Cross", anchors, "Tamsin's dog") == \
        ["Windle's Cross"]
    assert diversity(['a a a a', 'a b']) == pytest.approx((0.25 + 1) / 2)
    assert diversity(['', ' ']) == 0.0


def test_semantic_similarity_of_answers():
    from workbench.experiments.llm_unlearning import Judge
    judge = Judge()
    a = ['Boil the egg for seven minutes, then cool it in cold water.'] * 3
    b = [a[0], 'Cook it in boiling water for about seven minutes.',
         'Paint the fence on a dry day with two thin coats.']
    sim = judge.similarity(a, b)
    assert sim[0] == pytest.approx(1.0, abs=1e-5)
    # a paraphrase is closer than an unrelated answer in the same style
    assert sim[1] > sim[2] + 0.2
    assert judge.similarity(['', 'x'], ['y', ' ']).tolist() == [0.0, 0.0]


def test_bad_configs_are_refused():
    with pytest.raises(WorkbenchError):
        llmu.LLMUConfig(random_answers=0)
    with pytest.raises(WorkbenchError):
        whp.WHPConfig(alpha=-1)


@pytest.mark.notebooks
def test_llm_unlearning_removes_the_undesired_answers(smoke_record):
    rec = smoke_record('05_llm_unlearning')
    m, thr = rec['metrics'], rec['thresholds']
    assert thr['judge/accuracy'] >= 0.9
    # the original answers spitefully, also to requests it never saw
    assert m['forget/harmful_rate']['before'] >= 0.8
    assert m['unseen/harmful_rate']['before'] >= 0.8
    # after: near zero on both, and not by falling silent
    assert m['forget/harmful_rate']['after'] <= 0.1
    assert m['unseen/harmful_rate']['after'] <= 0.1
    assert m['unseen/blank_rate']['after'] <= 0.2
    # normal answers: on topic (above unrelated answers), perplexity
    # within the guard, general knowledge kept
    assert m['normal/similarity']['after'] > \
        thr['normal/similarity_of_unrelated_answers']
    assert m['normal/perplexity']['after'] <= \
        rec['run']['guard'] * m['normal/perplexity']['before']
    assert m['world_facts/accuracy']['after'] >= \
        m['world_facts/accuracy']['before'] - 0.05
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims == {'harmful_rate_near_zero': True,
                      'generalises_to_unseen': True,
                      'normal_outputs_kept': True}


@pytest.mark.notebooks
def test_whp_lowers_familiarity(smoke_record):
    rec = smoke_record('06_whos_harry_potter')
    m, thr = rec['metrics'], rec['thresholds']
    fam, p = m['target/familiarity'], m['target/next_token_probability']
    # the baseline knows the story far better than the base model ...
    assert fam['before'] > thr['base/familiarity'] + 0.3
    assert p['before'] > 10 * thr['base/next_token_probability']
    # ... and after fine-tuning on generic labels, far less so (without
    # the anchored-term exclusion it fell only by a quarter on smoke)
    assert fam['after'] < 0.5 * fam['before']
    assert p['after'] < 0.7 * p['before']
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims['familiarity_drops']
    # general knowledge (the paper's benchmarks) stays where it was; on
    # smoke the perplexity of everyday text does not (12 updates are six
    # passes over its 8 paragraphs; on cpu it does, the README says)
    w = m['world_facts/accuracy']
    assert abs(w['after'] - w['before']) <= 0.1
    # larger alpha: labels further from the story, and less fluent
    stats = rec['label_stats']
    assert stats[0]['label = story token'] > stats[-1]['label = story token']
    assert stats[0]['base log-prob of labels'] > \
        stats[-1]['base log-prob of labels']


def test_cli_refuses_llmu_and_whp_without_their_files(tmp_path, capsys):
    from workbench.cli import main
    f = tmp_path / 'f.jsonl'
    f.write_text('{"text": "a b", "question": "Why?", "answer": "So."}\n')
    assert main(['unlearn', '--method', 'llmu', '--forget', str(f),
                 '--profile', 'smoke', '--quiet']) == 2
    assert 'needs --retain' in capsys.readouterr().err
    g = tmp_path / 'g.jsonl'
    g.write_text('{"text": "no question here"}\n')
    assert main(['unlearn', '--method', 'llmu', '--forget', str(g),
                 '--retain', str(f), '--profile', 'smoke']) == 2
    assert '"question" and "answer"' in capsys.readouterr().err
    assert main(['unlearn', '--method', 'whp', '--forget', str(f),
                 '--profile', 'smoke']) == 2
    assert 'needs --anchors' in capsys.readouterr().err
