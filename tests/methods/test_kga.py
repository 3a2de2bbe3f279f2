"""KGA (Wang et al.): the objective is the difference of the two knowledge
gaps; the retain term's targets are the original's on each minibatch."""
import pytest
import torch

from workbench import WorkbenchError, metrics
from workbench import methods
from workbench.methods import kga

from conftest import random_logprobs


def test_kga_alignment_is_the_gap_difference(tiny):
    ids = torch.randint(1, 64, (2, 6), generator=torch.Generator()
                        .manual_seed(0))
    am = torch.ones_like(ids)
    am[1, 4:] = 0
    batch = {'input_ids': ids, 'attention_mask': am}
    target = random_logprobs(2, 5, 64, seed=3)
    forget = {**batch, 'target_logprobs': target}
    logp, mask = kga.vocab_logprobs(tiny, batch)
    kl = metrics.token_kl(target, logp, mask).item()
    l_a, gap_f = kga.alignment(tiny, forget, gap=kl + 0.25)
    assert gap_f.item() == pytest.approx(kl, rel=1e-5)
    assert l_a.item() == pytest.approx(0.25, abs=1e-5)
    loss, parts = kga.kga_loss(tiny, {
        'forget': forget, 'gap': kl + 0.25, 'alpha': 2.0,
        'retain': {**batch, 'target_logprobs': logp.detach()}})
    # the retain KL of a model against its own distribution is zero
    assert parts['retain_kl'] == pytest.approx(0.0, abs=1e-5)
    assert loss.item() == pytest.approx(0.25, abs=1e-4)


def test_measured_log_distributions_are_the_log_softmax_of_the_logits(tiny):
    """Without gradients the log-softmax is written over the logits: the
    same numbers, bit for bit; with them, the logits stay for the backward
    pass."""
    from conftest import ragged_tokens
    batch = ragged_tokens()
    logits = tiny(**batch).logits[:, :-1].float()
    with torch.no_grad():
        measured, mask = kga.vocab_logprobs(tiny, batch)
    assert torch.equal(measured, torch.log_softmax(logits, -1).detach())
    trained, _ = kga.vocab_logprobs(tiny, batch)
    assert torch.equal(trained.detach(), measured)
    (trained * mask[..., None]).sum().backward()
    assert next(tiny.parameters()).grad is not None


def test_bad_configs_are_refused():
    with pytest.raises(WorkbenchError, match='retain_weight'):
        kga.KGAConfig(retain_weight=-1)


def test_kga_retain_targets_are_the_originals_on_each_minibatch(
        roles, cache):
    """A* starts as a copy of A_D: at its first update the retain KL
    against A_D's distributions on that minibatch is zero (float16
    rounding), at the second it is not; the alignment term starts at the
    gap between KL(A_f || A_D) on the forget texts and the new-data gap."""
    from workbench.core import data
    people = data.people('forget', 2) + data.people('retain', 5)
    texts = [p['text'][:80] for p in people]  # short: a fast test
    for name, part in (('A_D', texts), ('A_f', texts[:2]),
                       ('A_n', texts[2:4])):
        roles.fit(name, part, epochs=1)
    tok = {k: data.tokenize(roles.tokenizer, v) for k, v in
           (('forget', texts[:2]), ('retain', texts[2:]),
            ('new', texts[2:4]))}
    seen = []
    task = methods.Task(forget=tok['forget'], retain=tok['retain'],
                        new=tok['new'], roles=roles, original='A_D')
    result = methods.run(
        kga, roles.copy('A_D', 'A_star'), task,
        kga.KGAConfig(steps=2, batch_size=2, stop_value=0.0),
        evaluate_forget=lambda m, logp, mask: seen.append(
            logp.shape) or {}, progress=False)
    assert result.steps == 2 and len(seen) == 3  # before and after each
    first, second = [e for e in result.events if e['kind'] == 'step']
    assert first['retain_kl'] == pytest.approx(0.0, abs=1e-3)
    assert second['retain_kl'] > 1e-5
    gap = kga.mean_kl(roles, 'A_n', 'A_D', tok['new'])
    forget_gap = kga.mean_kl(roles, 'A_f', 'A_D', tok['forget'])
    assert first['alignment'] == pytest.approx(abs(forget_gap - gap),
                                               abs=1e-3)
