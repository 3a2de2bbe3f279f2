"""Gradient checkpointing (the `cpu` profile's, for Binder's memory)
changes no number: the same gradients and the same trained roles, with the
checkpointed layers run again in the backward pass."""
import shutil

import torch

from workbench.core import models
from workbench.core.profiles import get_profile
from workbench.methods import ga

from conftest import random_tokens, step_gradient, tiny_llama


class Calls:
    """Counts the calls of a decoder layer's MLP (inside the layer's
    checkpointed forward; as it starts: a recomputation stops once it has
    what the backward pass needs)."""

    def __init__(self, layer):
        self.n = 0
        self.hook = layer.mlp.register_forward_pre_hook(self)

    def __call__(self, *args):
        self.n += 1


def test_a_checkpointed_lora_step_has_the_same_gradient():
    grads, calls = {}, {}
    for on in (False, True):
        model = tiny_llama()
        torch.manual_seed(0)  # LoRA's A
        model = models.prepare(model, get_profile(
            'cpu', lora_r=4, gradient_checkpointing=on))
        model.train()
        models.decoder_and_head(model)  # its one check, before counting
        top = Calls(model.base_model.model.model.layers[-1])
        grads[on] = step_gradient(model, ga.ga_loss,
                                  [random_tokens(n=4, T=12)], 1)
        calls[on] = top.n
    assert grads[False] and len(grads[False]) == len(grads[True])
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))
    assert (calls[False], calls[True]) == (1, 2)  # again, backward


def test_a_checkpointed_top_layer_step_has_the_same_gradient():
    """The top layer trains over a frozen one, whose output asks for no
    gradient: checkpointing must still reach the top layer's weights."""
    grads = {}
    for on in (False, True):
        model = models.prepare(tiny_llama(), get_profile(
            'smoke', gradient_checkpointing=on), top_layers=1)
        model.train()
        grads[on] = step_gradient(model, ga.ga_loss,
                                  [random_tokens(n=4, T=12)], 1)
    top = sum(1 for _ in tiny_llama().model.layers[1].parameters())
    assert len(grads[False]) == len(grads[True]) == top
    assert all(g.abs().sum() > 0 for g in grads[True])
    assert all(torch.allclose(a, b) for a, b in zip(grads[False],
                                                    grads[True]))


def test_a_checkpointed_role_trains_to_the_same_weights(tiny_model_dir,
                                                         cache):
    """Roles adapt the top layer of two, over the frozen trunk below."""
    from workbench.core.roles import Roles
    texts = ['The locker combination is 8 2 4 2 1 9.', 'Ana lives in Oslo.']
    states, calls = {}, {}
    for on in (False, True):
        shutil.rmtree(cache, ignore_errors=True)  # trained, not loaded
        roles = Roles(get_profile('smoke', model=tiny_model_dir, lora_r=4,
                                  role_layers=1, gradient_checkpointing=on),
                      progress=False)
        top = Calls(roles.base.model.layers[-1])
        assert roles.fit('a', texts, epochs=2)['cached'] is False
        states[on], calls[on] = roles.state('a'), top.n
    assert states[False].keys() == states[True].keys()
    assert all(torch.equal(states[False][k], states[True][k])
               for k in states[False])
    assert calls[True] > calls[False]


def test_a_checkpointed_sisa_classifier_has_the_same_gradient():
    """01's classifier (MiniLM with LoRA) checkpoints on `cpu` too."""
    from workbench.methods import sisa
    grads = {}
    for on in (False, True):
        torch.manual_seed(0)  # LoRA's A, the head
        model, tok = sisa.load_classifier('minilm', lora_r=4,
                                          gradient_checkpointing=on)
        model.train()
        batch = tok(['a short text', 'another, longer than the first one'],
                    return_tensors='pt', padding=True)
        model(batch['input_ids'], batch['attention_mask']).sum().backward()
        grads[on] = [p.grad.clone() for p in model.parameters()
                     if p.grad is not None]
    assert grads[False] and len(grads[False]) == len(grads[True])
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))
