"""The roles: every model an adapter on one shared base, trained or loaded from
the cache."""
import warnings

import pytest
import torch

from workbench import WorkbenchError
from workbench.core.profiles import get_profile


def test_roles_on_a_model_no_deeper_than_role_layers(tiny_model_dir,
                                                     cache):
    """With adapters on every layer (2 layers, smoke adapts the top 10),
    the second role targets the same linear layers as the first, not the
    first adapter's own."""
    from workbench.core.roles import Roles
    roles = Roles(get_profile('smoke', model=tiny_model_dir), progress=False)
    roles.add('a')
    roles.add('b')
    keys = {name: {k.replace(f'.{name}.', '.') for k in
                   roles.model.state_dict() if f'.{name}.' in k}
            for name in ('a', 'b')}
    assert keys['a'] and keys['a'] == keys['b']


def test_roles_share_one_base(roles, cache):
    texts = ['The locker combination is 8 2 4 2 1 9.']
    info = roles.fit('a', texts, epochs=2)
    assert info['cached'] is False
    batch = metrics_batch(roles, texts)
    with roles.active(None) as m:
        base = m(**batch).logits
    with roles.active('a') as m:
        trained = m(**batch).logits
    assert not torch.allclose(base, trained)
    roles.copy('a', 'b')
    # only the active role is trainable
    trainable = {n for n, p in roles.model.named_parameters()
                 if p.requires_grad}
    assert trainable and all('.b.' in n for n in trainable)
    with roles.active('b') as m:
        assert torch.allclose(m(**batch).logits, trained)
    assert roles.model.active_adapter == 'b'  # restored after `active`
    # a second fit of the same texts loads the same weights from the cache
    again = roles.fit('c', texts, epochs=2)
    assert again['cached'] is True
    with roles.active('c') as m:
        assert torch.allclose(m(**batch).logits, trained)
    assert roles.model.active_adapter == 'c'
    with warnings.catch_warnings():  # dropping the active role: no warning
        warnings.simplefilter('error')
        roles.drop('c')
    assert roles.model.active_adapter in roles.names
    with pytest.raises(WorkbenchError, match="no role 'c'"):
        roles.state('c')


def metrics_batch(roles, texts):
    enc = roles.tokenizer(texts, return_tensors='pt')
    return {'input_ids': enc['input_ids'],
            'attention_mask': enc['attention_mask']}
