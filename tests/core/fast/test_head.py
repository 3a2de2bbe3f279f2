"""The chunked head: KL by chunks equals the whole batch's, value and
gradient."""
import pytest
import torch

from workbench import metrics
from workbench.core.fast.head import head_kl_sum
from workbench.methods import kga

from conftest import random_logprobs


def test_head_kl_by_chunks_has_the_whole_batch_value_and_gradient(tiny):
    """KGA's alignment KL with the output head a few positions at a time
    (`vocab_kl`) against the plain expression on the whole batch's
    logits: the same value and the same gradient, with padding, a float16
    target and chunks that do not divide the positions."""
    from workbench.core.models import decoder_and_head
    from workbench.core.scoring import vocab_kl
    ids = torch.randint(1, 64, (3, 7), generator=torch.Generator()
                        .manual_seed(1))
    am = torch.ones_like(ids)
    am[1, 5:] = 0
    am[2, 3:] = 0
    batch = {'input_ids': ids, 'attention_mask': am}
    target = random_logprobs(3, 6, 64, seed=4).half()
    assert decoder_and_head(tiny) is not None
    tiny.train()

    def gradient(loss):
        tiny.zero_grad()
        (loss - 0.1).abs().backward()
        return torch.cat([q.grad.flatten() for q in tiny.parameters()
                          if q.grad is not None])

    logp, mask = kga.vocab_logprobs(tiny, batch)
    plain = metrics.token_kl(target, logp, mask)
    plain_grad = gradient(plain)
    for chunk in (1, 4, 128):
        decoder, head = decoder_and_head(tiny)
        hidden = decoder(**batch).last_hidden_state[:, :-1]
        kl = head_kl_sum(hidden[mask], head, target[mask],
                                 chunk) / mask.sum()
        assert kl.item() == pytest.approx(plain.item(), rel=1e-6)
        assert torch.allclose(gradient(kl), plain_grad, atol=1e-7,
                              rtol=1e-4)
    assert vocab_kl(tiny, batch, target).item() == pytest.approx(
        plain.item(), rel=1e-6)
    # a float32 target: the same, and left as it was
    target32 = target.float()
    kept = target32.clone()
    kl = vocab_kl(tiny, batch, target32)
    assert kl.item() == pytest.approx(plain.item(), rel=1e-5)
    assert torch.allclose(gradient(kl), plain_grad, atol=1e-7, rtol=1e-3)
    assert torch.equal(target32, kept)
