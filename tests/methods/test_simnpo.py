"""SimNPO against its equation on a tiny model."""
import pytest
import torch

from workbench import WorkbenchError
from workbench import methods
from workbench.methods import simnpo
from workbench.core.scoring import token_nll

from conftest import random_tokens, tiny_llama


def row_nll(model, tokens):
    """Mean token NLL of each row, one row at a time."""
    return torch.stack([token_nll(model, {k: v[i:i + 1]
                                          for k, v in tokens.items()})
                        for i in range(tokens['input_ids'].shape[0])])


def test_simnpo_loss_is_its_equation(tiny):
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    beta, delta = 2.0, 0.5
    loss, parts = simnpo.simnpo_loss(tiny, {'forget': f, 'retain': r},
                                     beta, delta, 0.25, 1.5)
    n = row_nll(tiny, f)
    by_hand = (-(2 / beta) * torch.log(torch.sigmoid(beta * (n - delta)))
               .mean() * 0.25 + 1.5 * token_nll(tiny, r))
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert parts['forget_nll'] == pytest.approx(n.mean().item(), rel=1e-5)


def test_small_beta_is_gradient_ascent_on_each_rows_mean_nll(tiny):
    """As beta -> 0, L_SimNPO = 2 log 2 / beta - E[NLL / |y|] + O(beta):
    its gradient is that of ascent on the rows' mean token NLL (with
    length normalisation, unlike NPO's whole-sequence likelihood)."""
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    tiny.zero_grad()
    loss, _ = simnpo.simnpo_loss(tiny, {'forget': f, 'retain': r}, 1e-4,
                                 0.0, 1.0, 0.0)
    loss.backward()
    g = [p.grad.clone() for p in tiny.parameters()]
    tiny.zero_grad()
    (-row_nll(tiny, f).mean()).backward()
    for a, b in zip(g, (p.grad for p in tiny.parameters())):
        assert torch.allclose(a, b, atol=1e-4)


def test_weight_fades_once_the_rows_are_unlikely():
    """d L / d NLL_i = -(2 / n) sigmoid(-beta (NLL_i - delta))."""
    nll = torch.tensor([0.1, 1.0, 10.0], requires_grad=True)
    beta, delta = 4.5, 0.0
    (-(2 / beta) * torch.nn.functional.logsigmoid(beta * (nll - delta))
     .mean()).backward()
    expected = -2 / 3 * torch.sigmoid(-beta * (nll.detach() - delta))
    assert torch.allclose(nll.grad, expected)
    assert -nll.grad[0] > -nll.grad[1] > -nll.grad[2] > 0


def test_simnpo_unlearns_what_the_model_learned():
    model = tiny_llama()
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):  # memorise the forget rows first
        opt.zero_grad()
        token_nll(model, f).backward()
        opt.step()
    learned = token_nll(model, f).item()
    assert learned < 0.5
    config = simnpo.Config(lr=1e-2, steps=5, micro_batch=2)
    res = methods.run('simnpo', model, methods.Task(forget=f, retain=r),
                      config, progress=False)
    assert res.status == 'completed' and res.steps == 5
    assert token_nll(model, f).item() > learned + 0.5


def test_simnpo_refuses_bad_settings():
    with pytest.raises(WorkbenchError, match='beta > 0'):
        simnpo.Config(beta=0)
    with pytest.raises(WorkbenchError, match='delta >= 0'):
        simnpo.Config(delta=-1)
