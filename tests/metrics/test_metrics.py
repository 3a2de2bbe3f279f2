"""Every metric on hand-built cases whose value is known exactly."""
import math

import numpy as np
import pytest
import torch

from conftest import UniformLM
from workbench import metrics
from workbench.core.fast.kv import cache_of, with_cache

CHAIN = torch.arange(12)[None]  # 0, 1, ..., 11: what SuccessorLM predicts
# x = 0 1 2 5 6: the argmax misses only at 5 (it predicts 3)
BROKEN = torch.tensor([[0, 1, 2, 5, 6]])


def test_copying_model_scores_one(successor):
    assert metrics.memorization_accuracy(successor, CHAIN).item() == 1.0
    el = metrics.extraction_likelihood(successor, CHAIN, n=3)
    assert el.item() == pytest.approx(1.0)
    assert metrics.extraction_strength(successor, CHAIN).item() == 1.0


def test_ma_by_hand(successor):
    # targets 1, 2, 5, 6: predicted 1, 2, 3, 6 -> 3 of 4
    assert metrics.memorization_accuracy(successor, BROKEN).item() == 0.75


def test_el_by_hand(successor):
    # n = 2, prefixes t = 1..3 (T - n = 3):
    # t=1: [1 2 3 4] vs [1 2 5 6] -> (1,2) of 3 bigrams = 1/3
    # t=2: [2 3 4] vs [2 5 6] -> 0;  t=3: [3 4] vs [5 6] -> 0
    el = metrics.extraction_likelihood(successor, BROKEN, n=2)
    assert el.item() == pytest.approx(1 / 9)


def test_es_by_hand(successor):
    # hits T T F T: the all-correct suffix starts at k = 3 of L = 4
    assert metrics.extraction_strength(successor, BROKEN).item() == 0.25


def test_overlap_counts_prediction_ngrams_found_in_truth():
    assert metrics.overlap([1, 2, 1, 2], [1, 2, 3, 4], 2) == 2 / 3
    assert metrics.overlap([9, 9], [1, 2], 2) == 0.0


def test_padding_is_ignored(successor):
    ids = torch.tensor([[0, 1, 2, 5, 6, 0, 0], [3, 4, 5, 6, 7, 8, 9]])
    mask = torch.tensor([[1] * 5 + [0, 0], [1] * 7])
    ma = metrics.memorization_accuracy(successor, ids, mask)
    assert ma.tolist() == [0.75, 1.0]
    el = metrics.extraction_likelihood(successor, ids, 2, attention_mask=mask)
    assert el.tolist() == pytest.approx([1 / 9, 1.0])


@pytest.mark.parametrize('stride', [1, 3])
def test_fast_el_equals_naive_loop(tiny, stride):
    torch.manual_seed(1)
    ids = torch.randint(1, 64, (3, 24))
    ids[1, 5:] = ids[1, 5:].sort().values  # some structure
    mask = torch.ones_like(ids)
    mask[2, 18:] = 0
    fast = metrics.extraction_likelihood(tiny, ids, 2, stride, mask)
    naive = metrics.extraction_likelihood_naive(tiny, ids, 2, stride, mask)
    assert torch.equal(fast, naive)


def test_greedy_continue_ignores_eos_and_padding(successor):
    out = metrics.greedy_continue(successor, [[3], [7, 8, 9]], [4, 2])
    assert out == [[4, 5, 6, 7], [10, 11]]


def test_perplexity_of_uniform_model_is_vocab_size():
    ids = torch.randint(0, 50, (2, 10))
    assert metrics.perplexity(UniformLM(50), ids) == pytest.approx(50)


@pytest.mark.parametrize('attack', ['loss', 'zlib', 'min_k', 'min_k++'])
def test_mia_separates_memorised_from_random(successor, attack):
    torch.manual_seed(0)
    forget = torch.stack([torch.arange(s, s + 16) % 50 for s in range(6)])
    holdout = torch.randint(0, 50, (6, 16))
    f = {'input_ids': forget, 'attention_mask': torch.ones_like(forget),
         'texts': ['chain text'] * 6}
    h = {'input_ids': holdout, 'attention_mask': torch.ones_like(holdout),
         'texts': ['random text'] * 6}
    assert metrics.mia_auc(successor, f, h, attack) == 1.0
    # the same data on both sides: no better than chance
    assert metrics.mia_auc(successor, f, f, attack) == 0.5
    # several attacks from one forward pass give the same AUCs
    both = metrics.mia_aucs(successor, f, h, (attack, 'loss'))
    assert both == {attack: 1.0, 'loss': 1.0}


class SixLover(torch.nn.Module):
    """Puts extra probability on one token (the digit 6) everywhere."""

    def __init__(self, tokenizer):
        super().__init__()
        self.six = tokenizer('6')['input_ids'][-1]
        self.vocab = len(tokenizer)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.dummy
        logits[..., self.six] = 5.0
        from types import SimpleNamespace
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_exposure(smol_tokenizer):
    model = SixLover(smol_tokenizer)
    top = metrics.exposure(model, smol_tokenizer, 'PIN', '6 6 6 6 6 6',
                           n_candidates=100)
    assert top == pytest.approx(math.log2(10 ** 6))
    flat = metrics.exposure(UniformLM(len(smol_tokenizer)), smol_tokenizer,
                            'PIN', '1 2 3 4 5 6', n_candidates=100)
    assert flat == pytest.approx(0.0, abs=1e-9)


def test_truth_ratio_aggregates():
    assert metrics.truth_ratio([0.5, 2.0], forget=True) == pytest.approx(0.5)
    assert metrics.truth_ratio([0.5, 2.0], forget=False) == \
        pytest.approx(0.25)


def test_forget_quality_model_utility_privleak():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert metrics.forget_quality(a, a) == pytest.approx(1.0)
    assert metrics.forget_quality(a, a + 3) < 1e-10
    assert metrics.model_utility([0.5, 1.0]) == pytest.approx(2 / 3)
    assert metrics.privleak(0.6, 0.5) == pytest.approx(-20.0)


def test_truth_ratios_of_uniform_model_are_one(smol_tokenizer):
    qa = [{'question': 'Q?', 'paraphrased_answer': 'a b c',
           'perturbed_answers': ['a b d', 'a b e']}]
    r = metrics.truth_ratios(UniformLM(len(smol_tokenizer)), smol_tokenizer,
                             qa)
    assert r == pytest.approx([1.0], rel=1e-4)


def test_rouge_l_recall():
    r = metrics.rouge_l_recall(['the cat sat', 'dog'],
                               ['the cat sat', 'a cat'])
    assert r.tolist() == [1.0, 0.0]


def test_multiple_choice_picks_the_likeliest_choice(smol_tokenizer):
    model = SixLover(smol_tokenizer)
    items = [{'question': 'Q?', 'choices': ['7', '6'], 'label': 1},
             {'question': 'Q?', 'choices': ['6', '3'], 'label': 1}]
    # the model prefers '6': right on the first item, wrong on the second
    assert metrics.multiple_choice_accuracy(model, smol_tokenizer,
                                            items) == 0.5


def test_multiple_choice_probability_is_openunlearnings(smol_tokenizer):
    """The continuous utility number is the correct choice's normalised
    probability (`probability_w_options`), from the same scoring as the
    accuracy."""
    model = SixLover(smol_tokenizer)
    items = [{'question': 'Q?', 'choices': ['7', '6', '3'], 'label': 1},
             {'question': 'Q?', 'choices': ['6', '3', '8'], 'label': 2}]
    hits, probs = metrics.multiple_choice_scores(model, smol_tokenizer,
                                                 items)
    assert hits.tolist() == [1.0, 0.0]
    right = [it['choices'][it['label']] for it in items]
    wrong = [[c for j, c in enumerate(it['choices']) if j != it['label']]
             for it in items]
    expected = metrics.normalised_probability(
        model, smol_tokenizer, ['Q?', 'Q?'], right, wrong)
    assert probs == pytest.approx(expected, rel=1e-5)
    assert probs[0] > 0.8 and probs[1] < 0.1
    assert metrics.world_facts_metrics(model, smol_tokenizer, items) == \
        pytest.approx({'world_facts/accuracy': 0.5,
                       'world_facts/probability': probs.mean()})


def test_answer_probability_and_generation(smol_tokenizer):
    model = SixLover(smol_tokenizer)
    p = metrics.answer_probability(model, smol_tokenizer, ['Q?', 'Q?'],
                                   ['6', '7'])
    assert p[0] > 10 * p[1]
    answers = metrics.generate_answers(model, smol_tokenizer, ['Q?'], 4)
    assert answers == ['6666']


class Chain(torch.nn.Module):
    """Next token by a table of the last one: after the prompt a newline,
    then ' Paris', newline, ' Paris', ... (answer: 'Paris'); counts its
    forward passes."""

    def __init__(self, tokenizer):
        super().__init__()
        self.vocab = len(tokenizer)
        self.nl = tokenizer('\n')['input_ids'][-1]
        self.word = tokenizer(' Paris')['input_ids'][-1]
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, input_ids, **kwargs):
        from types import SimpleNamespace
        self.calls += 1
        last = input_ids[:, -1]
        nxt = torch.where(last == self.nl, self.word, self.nl)
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.dummy
        logits[torch.arange(len(nxt)), -1, nxt] = 10.0
        return SimpleNamespace(logits=logits, past_key_values=None)


def test_generation_stops_where_the_answer_is_complete(smol_tokenizer):
    model = Chain(smol_tokenizer)
    answers = metrics.generate_answers(model, smol_tokenizer, ['Q?', 'R?'],
                                       20)
    # the leading newline does not end the answer; the one after it does
    assert answers == ['Paris', 'Paris']
    assert model.calls == 3  # prompt, then two tokens: not 20 passes
    full = metrics.greedy_continue(model, [[5]], [20])[0]
    assert smol_tokenizer.decode(full).strip().split('\n')[0] == 'Paris'


def test_extraction_strength_reuses_given_stats(successor):
    ids = torch.tensor([[0, 1, 2, 9, 4, 5]])  # a miss at 9, hits after
    stats = metrics.token_stats(successor, ids)
    es = metrics.extraction_strength(successor, ids, stats=stats)
    assert torch.equal(es, metrics.extraction_strength(successor, ids))
    assert 0 < es.item() < 1


def test_continuations_of_one_encoded_prompt_equal_full_passes(tiny):
    from workbench.core.scoring import continuation_logprobs
    prompts = [[5, 9, 3, 17], [8], [2, 30, 11, 4, 6, 21, 7]]
    conts = [[[12, 13], [40], [3, 3, 3, 9]], [[1, 2, 3]], [[44], [45, 46]]]
    # a small max_tokens forces several prompt groups and job chunks
    for max_tokens in (2048, 12):
        got = continuation_logprobs(tiny, prompts, conts, max_tokens)
        for p, cs, lps in zip(prompts, conts, got):
            for c, lp in zip(cs, lps):
                ids = torch.tensor([p + c])
                full = torch.log_softmax(tiny(input_ids=ids).logits[0], -1)
                want = full[len(p) - 1:-1].gather(
                    -1, torch.tensor(c)[:, None])[:, 0]
                assert torch.allclose(lp, want, atol=1e-5)


def test_answers_scored_after_their_question_as_in_one_qa_batch(
        smol_tokenizer):
    from conftest import tiny_llama
    from workbench.metrics.qa import answer_logprobs, qa_batch
    model = tiny_llama(vocab=len(smol_tokenizer))
    qs, ans = ['Who?', 'Where is it?', 'Who?'], ['Ann', 'Here', 'Bob Lee']
    got = answer_logprobs(model, smol_tokenizer, qs, ans)
    b = qa_batch(smol_tokenizer, qs, ans)
    s = metrics.token_stats(model, b['input_ids'], b['attention_mask'])
    m = s['mask'] & b['target_mask'][:, 1:].bool()
    for row, lp in enumerate(got):
        assert torch.allclose(lp, s['logprob'][row][m[row]], atol=1e-5)


def test_token_stats_in_length_order_equal_one_row_at_a_time(tiny):
    g = torch.Generator().manual_seed(0)
    lengths = [3, 12, 5, 12, 1, 7, 9]
    ids = torch.randint(1, 64, (len(lengths), 12), generator=g)
    am = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        am[i, :n] = 1
    ids = ids * am
    for kw in ({'max_tokens': 20}, {'batch_size': 3}, {}):
        s = metrics.token_stats(tiny, ids, am, vocab_stats=True, **kw)
        for i, n in enumerate(lengths):
            one = metrics.token_stats(tiny, ids[i:i + 1, :n],
                                      vocab_stats=True)
            assert torch.equal(s['mask'][i, :n - 1], torch.ones(n - 1).bool())
            assert not s['mask'][i, n - 1:].any()
            # sigma = sqrt(E[log p^2] - mu^2) cancels: a looser tolerance
            for k, tol in (('logprob', 1e-5), ('mu', 1e-5), ('sigma', 1e-3)):
                assert torch.allclose(s[k][i, :n - 1], one[k][0], atol=tol)
            assert torch.equal(s['hit'][i, :n - 1], one['hit'][0])


def test_vocab_moments_by_positions_equal_the_whole_batch():
    from workbench.core.scoring import vocab_moments
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 50, 300, generator=g) * 4
    lse = torch.logsumexp(logits, -1)
    logp = logits - lse[..., None]
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * logp ** 2).sum(-1) - mu ** 2).clamp(min=1e-6).sqrt()
    for positions in (1, 7, 64, 1000):
        got = vocab_moments(logits, lse, positions)
        assert torch.equal(got[0], mu) and torch.equal(got[1], sigma)


def test_token_stats_by_head_chunks_are_those_of_the_whole_logits(tiny):
    """Without vocab_stats the head scores the real positions by chunks;
    the numbers are a log-softmax of the model's own logits."""
    from workbench.core.models import decoder_and_head
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 64, (5, 200), generator=g)
    am = torch.ones_like(ids)
    am[1, 150:] = am[3, 17:] = 0  # right-padded rows
    ids = ids * am
    s = metrics.token_stats(tiny, ids, am)
    assert decoder_and_head(tiny) is not None  # the chunked path
    with torch.no_grad():
        logp = tiny(input_ids=ids, attention_mask=am).logits[:, :-1] \
            .log_softmax(-1)
    m = am[:, 1:].bool() & am[:, :-1].bool()
    assert torch.equal(s['mask'], m)
    want = logp.gather(-1, ids[:, 1:, None])[..., 0]
    assert torch.allclose(s['logprob'][m], want[m], atol=1e-5)
    assert torch.equal(s['hit'][m], (logp.argmax(-1) == ids[:, 1:])[m])
    assert not s['logprob'][~m].any() and not s['hit'][~m].any()


def _decode(model, cache, first, steps, select=None):
    """Greedy steps from `cache`; `select` (step, rows) drops rows once."""
    token, out, mask_len = first, [], cache.get_seq_length()
    for s in range(steps):
        if select and s == select[0]:
            cache.batch_select_indices(select[1])
            token = token[select[1]]
            out = [o[select[1]] for o in out]
        mask_len += 1
        mask = torch.ones((len(token), mask_len), dtype=torch.long)
        res = model(input_ids=token[:, None], attention_mask=mask,
                    use_cache=True, **with_cache(model, cache))
        cache = cache_of(res)
        out.append(res.logits[:, -1])
        token = res.logits[:, -1].argmax(-1)
    return torch.stack(out, 1)


@pytest.mark.parametrize('select', [None, torch.tensor([0, 1]),
                                    torch.tensor([2, 0])])
@torch.no_grad()
def test_rows_cache_decodes_as_a_copied_cache(tiny, select):
    import copy
    from workbench.core.fast.kv import rows_cache
    torch.manual_seed(0)
    ids = torch.randint(1, 64, (2, 9))
    cache = cache_of(tiny(input_ids=ids, use_cache=True))
    rows = torch.tensor([1, 0, 1])
    plain = copy.deepcopy(cache)
    plain.reorder_cache(rows)
    first = ids[rows, -1]
    sel = None if select is None else (3, select)
    want = _decode(tiny, plain, first, 6, sel)
    got = _decode(tiny, rows_cache(cache, rows, 6), first, 6, sel)
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match='no room'):
        _decode(tiny, rows_cache(cache, rows, 2), first, 3)


def test_el_on_a_sliding_window_model_equals_the_naive_loop():
    from transformers import MistralConfig, MistralForCausalLM
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=128, sliding_window=64,
        pad_token_id=0)).eval()
    ids = torch.randint(1, 64, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    fast = metrics.extraction_likelihood(model, ids, 2, 2, mask)
    naive = metrics.extraction_likelihood_naive(model, ids, 2, 2, mask)
    assert torch.equal(fast, naive)


def test_scipy_and_sklearn_load_only_when_used():
    # about 75 MB that a training run before them would carry
    import subprocess
    import sys
    code = ('import sys, workbench.experiments.people, workbench.metrics, '
            'workbench.methods.ga, workbench.methods.seul; '
            'print(sorted(m for m in ("scipy", "sklearn") '
            'if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == '[]'
