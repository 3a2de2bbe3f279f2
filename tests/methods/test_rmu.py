"""RMU against its equations on a tiny model."""
import types

import pytest
import torch

from workbench import WorkbenchError
from workbench import methods
from workbench.methods import rmu
from workbench.core.models import keep_reference, reference

from conftest import random_tokens, tiny_llama


def test_steered_layer_keeps_the_papers_relative_depth():
    def model(n, first_trainable=0):
        blocks = [torch.nn.Linear(1, 1) for _ in range(n)]
        for block in blocks[:first_trainable]:
            block.requires_grad_(False)
        decoder = types.SimpleNamespace(layers=blocks)
        return types.SimpleNamespace(get_decoder=lambda: decoder)
    assert rmu.steered_layer(model(32)) == 7
    assert rmu.steered_layer(model(30)) == 7
    assert rmu.steered_layer(model(2)) == 0
    assert rmu.steered_layer(model(2), 1.0) == 1
    # adapters on the top 10 of 30 layers: the depth among those
    assert rmu.steered_layer(model(30, 20)) == 22
    assert rmu.steered_layer(model(30, 20), 0.5) == 25
    with pytest.raises(WorkbenchError, match='no'):
        rmu.steered_layer(model(4, 4))


def test_activations_are_the_layers_outputs(tiny):
    batch = random_tokens(n=2)
    seen = []
    hook = tiny.model.layers[1].register_forward_hook(
        lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        h = rmu.activations(tiny, batch, 1)
    hook.remove()
    assert torch.allclose(h, seen[0], atol=1e-6)


def test_activation_loss_and_control_vector_by_hand():
    h = torch.tensor([[[1.0, 3.0], [2.0, 2.0], [9.0, 9.0]]])
    target = torch.zeros(2)
    mask = torch.tensor([[1, 1, 0]])
    # rows: mean over d, summed over the masked tokens, over their number
    assert rmu.activation_loss(h, target, mask).item() == pytest.approx(
        ((1 + 9) / 2 + (4 + 4) / 2) / 2)
    u = rmu.control_vector(16, 5.0, seed=3)
    assert u.norm().item() == pytest.approx(5.0)
    assert (u >= 0).all() and torch.equal(u, rmu.control_vector(16, 5.0, 3))


def test_rmu_steers_the_forget_states_and_holds_the_retain_states():
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    depth, steering = 0.5, 4.0

    def run(retain_weight):
        """(forget states' distance to the control vector before, after;
        retain states' distance to the original's after)."""
        model = tiny_llama()
        keep_reference(model)
        config = rmu.Config(lr=1e-2, steps=8, micro_batch=4,
                            steering=steering, depth=depth,
                            retain_weight=retain_weight)
        layer = rmu.steered_layer(model, depth)
        control = rmu.control_vector(model.config.hidden_size, steering,
                                     config.seed)

        @torch.no_grad()
        def distances():
            to_control = rmu.activation_loss(rmu.activations(model, f, layer),
                                             control, f['attention_mask'])
            with reference(model) as ref:
                kept = rmu.activations(ref, r, layer)
            drift = rmu.activation_loss(rmu.activations(model, r, layer),
                                        kept, r['attention_mask'])
            return to_control.item(), drift.item()

        before, _ = distances()
        res = methods.run('rmu', model, methods.Task(forget=f, retain=r),
                          config, progress=False)
        assert res.status == 'completed' and res.steps == 8
        assert res.layer == layer == 1
        after, drift = distances()
        return before, after, drift

    before, after, held = run(1.0)
    assert after < 0.5 * before  # the forget states went to the vector
    _, _, free = run(0.0)
    assert held < 0.5 * free  # the retain term held the retain states


def test_rmu_refuses_bad_settings():
    with pytest.raises(WorkbenchError, match='steering > 0'):
        rmu.Config(steering=0)
    with pytest.raises(WorkbenchError, match='depth in'):
        rmu.Config(depth=1.5)
