"""Yao et al.'s three-term update: the losses cover exactly what the paper
says."""
import pytest
import torch

from workbench import WorkbenchError
from workbench.methods import llmu
from workbench.metrics.qa import qa_batch

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


def test_bad_configs_are_refused():
    with pytest.raises(WorkbenchError):
        llmu.LLMUConfig(random_answers=0)
