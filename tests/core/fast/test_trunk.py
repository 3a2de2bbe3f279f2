"""The frozen trunk: a model whose bottom layers run once per text gives
the logits and gradients of the full forward pass, and runs in full
wherever the shortcut would not be the same model."""
import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import tiny_llama
from workbench.metrics.extraction import greedy_continue
from workbench.core.fast.trunk import FrozenTrunk


def four_layers(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(config).eval().requires_grad_(False)


def with_top_adapter(model):
    """LoRA on the top two layers, B made non-zero (a trained role)."""
    peft = get_peft_model(model, LoraConfig(
        r=4, lora_alpha=8, target_modules=['q_proj', 'v_proj', 'down_proj'],
        layers_to_transform=[2, 3], lora_dropout=0.0))
    torch.manual_seed(1)
    for name, p in peft.named_parameters():
        if 'lora_B' in name:
            p.data.normal_(0, 0.2)
    return peft


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (3, 9), generator=g)
    am = torch.ones_like(ids)
    am[1, 5:] = 0  # right padding
    am[2, 7:] = 0
    return ids, am


def test_stored_states_give_the_full_logits_and_gradients():
    model = four_layers()
    trunk = FrozenTrunk(model, 2)
    assert trunk.enabled
    peft = with_top_adapter(model)
    ids, am = batch()
    real = am.bool()

    def loss_and_grads():
        peft.zero_grad()
        logits = peft(input_ids=ids, attention_mask=am).logits
        loss = logits[real].logsumexp(-1).mean()
        loss.backward()
        return logits.detach(), {n: p.grad.clone() for n, p in
                                 peft.named_parameters() if p.requires_grad}

    trunk.enabled = False
    full, full_grads = loss_and_grads()
    trunk.enabled = True
    first, _ = loss_and_grads()  # runs the bottom, stores the states
    assert trunk.misses == 3 and trunk.hits == 0
    again, grads = loss_and_grads()  # from the store
    assert trunk.hits == 3
    for x in (first, again):
        assert torch.allclose(x[real], full[real], atol=1e-5)
    assert full_grads.keys() == grads.keys() and grads
    for n, g in grads.items():
        assert torch.allclose(g, full_grads[n], atol=1e-5), n
    # a row stored once serves the same row with other padding
    trimmed = peft(input_ids=ids[1:2, :5], attention_mask=am[1:2, :5]).logits
    assert trunk.misses == 3
    assert torch.allclose(trimmed[0], full[1, :5], atol=1e-5)


def test_generation_and_given_positions_run_in_full():
    model = four_layers()
    trunk = FrozenTrunk(model, 2)
    peft = with_top_adapter(model)
    prompts = [[5, 9, 3], [7, 2]]
    with torch.no_grad():
        with_trunk = greedy_continue(peft, prompts, [6, 6])
        trunk.enabled = False
        without = greedy_continue(peft, prompts, [6, 6])
    assert with_trunk == without
    assert trunk.hits == trunk.misses == 0  # the KV-cache passes ran in full


def test_trainable_or_adapted_bottom_layers_run_in_full():
    model = four_layers()
    trunk = FrozenTrunk(model, 2)
    ids, am = batch()
    model.model.layers[0].mlp.down_proj.weight.requires_grad_(True)
    model(input_ids=ids, attention_mask=am)
    assert trunk.misses == 0
    model.requires_grad_(False)
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=['q_proj'],
                                            layers_to_transform=[0]))
    peft(input_ids=ids, attention_mask=am)
    assert trunk.misses == 0
    trunk.remove()
    assert 'forward' not in vars(model.model)


def test_a_model_the_shortcut_would_change_keeps_its_own_pass():
    model = tiny_llama()
    model.requires_grad_(False)
    # an architecture that rescales its input embeddings inside forward
    inner = model.model
    own = inner.forward

    def scaled(input_ids=None, inputs_embeds=None, **kwargs):
        if inputs_embeds is None:
            inputs_embeds = inner.embed_tokens(input_ids)
        return own(inputs_embeds=inputs_embeds * 3.0, **kwargs)
    inner.forward = scaled
    trunk = FrozenTrunk(model, 1)
    assert not trunk.enabled
    with pytest.raises(ValueError, match='first_trained'):
        FrozenTrunk(tiny_llama(), 2)


def test_roles_run_known_texts_from_the_trunk():
    from workbench.core.roles import Roles
    roles = Roles('smoke', progress=False)
    assert roles.trunk is not None and roles.trunk.enabled
    assert roles.trunk.k == 30 - roles.profile.role_layers
    enc = roles.tokenizer(['Ada Lovelace was born in London.',
                           'The sea is wide.'], return_tensors='pt',
                          padding=True)
    roles.add('role')
    with roles.active('role') as m:
        first = m(**enc).logits
        second = m(**enc).logits
        roles.trunk.enabled = False
        full = m(**enc).logits
        roles.trunk.enabled = True
    real = enc['attention_mask'].bool()
    assert roles.trunk.hits == 2
    assert torch.allclose(first[real], full[real], atol=1e-3)
    assert torch.equal(first, second)


def test_continuations_through_the_trunk_equal_the_cached_prompt_path():
    from workbench.core.scoring import continuation_logprobs
    model = four_layers()
    trunk = FrozenTrunk(model, 2)
    peft = with_top_adapter(model)
    prompts = [[5, 9, 3, 17], [8], [2, 30, 11, 4, 6, 21, 7]]
    conts = [[[12, 13], [40], [3, 3, 3, 9]], [[1, 2, 3]], [[44], [45, 46]]]
    trunk.enabled = False
    want = continuation_logprobs(peft, prompts, conts)
    trunk.enabled = True
    for max_tokens in (2048, 12, 1):  # one batch, several, one row each
        got = continuation_logprobs(peft, prompts, conts, max_tokens)
        for g, w in zip(got, want):
            for a, b in zip(g, w):
                assert a.shape == b.shape
                assert torch.allclose(a, b, atol=1e-5)
    assert trunk.hits > 0
