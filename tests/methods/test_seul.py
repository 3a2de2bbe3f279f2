"""SeUL's span selection and loss (Wang et al.): each checked against a hand
computation."""
import pytest
import torch

from workbench import WorkbenchError
from workbench.core.data import full_batches
from workbench import methods
from workbench.methods import seul
from workbench.core.scoring import token_nll

from conftest import ragged_tokens, random_tokens, step_gradient


def test_span_shares_count_the_span_targets(tiny):
    data = ragged_tokens(n=4)
    spans = torch.zeros_like(data['attention_mask'])
    spans[:, 2:5] = 1
    data = {**data, 'target_mask': spans}
    full = step_gradient(tiny, seul.seul_loss, [data], 1)
    it, chunks = full_batches(data, micro_batch=1)
    acc = step_gradient(tiny, seul.seul_loss,
                        [next(it) for _ in range(chunks)], chunks)
    for a, b in zip(full, acc):
        assert torch.allclose(a, b, atol=1e-6)


def test_select_tokens_takes_the_least_likely_share():
    logprob = torch.log(torch.tensor([[0.9, 0.1, 0.8, 0.05, 0.7, 0.95,
                                       0.6, 0.2, 0.99, 0.5]]))
    mask = torch.ones_like(logprob, dtype=torch.bool)
    sel = seul.select_tokens(logprob, mask, quantile=0.2, merge_gap=0)
    assert sel[0].nonzero().flatten().tolist() == [1, 3]
    # a probability threshold instead of a quantile
    sel = seul.select_tokens(logprob, mask, threshold=0.55, merge_gap=0)
    assert sel[0].nonzero().flatten().tolist() == [1, 3, 7, 9]
    # tokens one apart merge into one span; padding is never selected
    sel = seul.select_tokens(logprob, mask, quantile=0.2, merge_gap=1)
    assert sel[0].nonzero().flatten().tolist() == [1, 2, 3]
    mask[0, 3] = False
    sel = seul.select_tokens(logprob, mask, quantile=0.2, merge_gap=0)
    assert not sel[0, 3]


def test_seul_loss_covers_exactly_the_span_tokens(tiny):
    data = random_tokens(n=2, T=10)
    span = torch.zeros_like(data['input_ids'], dtype=torch.bool)
    span[0, 3:6] = True
    span[1, 7:9] = True
    loss = seul.seul_loss(tiny, {**data, 'target_mask': span})
    logp = torch.log_softmax(tiny(input_ids=data['input_ids']).logits, -1)
    picked = [logp[b, t - 1, data['input_ids'][b, t]]
              for b, t in span.nonzero().tolist()]
    assert torch.allclose(loss, torch.stack(picked).mean(), atol=1e-5)
    # only the span targets get a gradient through the logits
    logits = tiny(input_ids=data['input_ids']).logits.detach()
    logits.requires_grad_(True)

    class Fixed(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            return type('O', (), {'logits': logits})()

        def parameters(self):
            return iter([logits])
    seul.seul_loss(Fixed(), {**data, 'target_mask': span}).backward()
    touched = logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched[:, :-1], span[:, 1:])


def test_current_selection_selects_about_the_quantile(tiny):
    data = random_tokens(n=3, T=20)
    cfg = seul.SeULConfig(quantile=0.25, merge_gap=0)
    loss, parts = seul.current_selection_loss(cfg)(tiny, data)
    assert loss.item() < 0
    assert 0.2 <= parts['selected'] <= 0.35


def test_seul_forgets_the_spans_more_than_the_rest(tiny):
    data = random_tokens(n=4, T=12)
    span = torch.zeros_like(data['input_ids'], dtype=torch.bool)
    span[:, 4:7] = True

    def nll(mask):
        return token_nll(tiny, {**data, 'target_mask': mask}).item()
    before_in, before_out = nll(span), nll(~span)
    cfg = seul.SeULConfig(lr=1e-2, steps=3, spans='annotated')
    methods.run('seul', tiny, methods.Task(forget=data, span_mask=span), cfg,
                progress=False)
    rise_in, rise_out = nll(span) - before_in, nll(~span) - before_out
    assert rise_in > 0.1 and rise_in > rise_out
    with pytest.raises(WorkbenchError, match='annotated'):
        methods.run('seul', tiny, methods.Task(forget=data), cfg,
                    progress=False)
    with pytest.raises(WorkbenchError):
        seul.SeULConfig(quantile=0.0)


def test_ascent_share_on_spans_is_the_share_of_the_logit_gradient(tiny):
    """The share equals the L1 norm of autograd's gradient of the summed
    token log-probabilities at the logits, span targets over all."""
    from workbench.metrics import token_stats
    data = random_tokens(n=3, T=10)
    span = torch.zeros_like(data['input_ids'], dtype=torch.bool)
    span[:, 2:5] = True
    logits = tiny(input_ids=data['input_ids']).logits.detach()
    logits.requires_grad_(True)
    logp = torch.log_softmax(logits[:, :-1], -1).gather(
        -1, data['input_ids'][:, 1:, None]).sum()
    logp.backward()
    norm = logits.grad[:, :-1].abs().sum(-1)  # per target x_1..x_T-1
    expected = (norm * span[:, 1:]).sum() / norm.sum()
    stats = token_stats(tiny, data['input_ids'], data['attention_mask'])
    share = seul.ascent_share_on_spans(stats, span)
    assert share == pytest.approx(expected.item(), rel=1e-4)
    assert 0 < share < 1
