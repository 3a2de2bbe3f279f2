"""Every registered method's update on every device and dtype present,
with both tokenizers: the loss is finite, the trained weights move, and
they stay on the model's device in their dtype."""
import math
from dataclasses import fields

import pytest
import torch

from workbench import methods
from workbench.core import data
from workbench.metrics import span_mask

pytestmark = pytest.mark.device

# each method, and the variants that take another path through its code
VARIANTS = [(name, {}) for name in methods.REGISTRY] + [
    ('seul', {'spans': 'annotated'}), ('seul', {'selector': 'current'}),
    ('loo', {'ensemble': 'full'})]


def task_for(setting, method):
    """The task `method` reads, from the setting's texts and roles."""
    s, tok = setting, setting.tok
    forget = s.qa['forget']
    task = methods.Task(forget=forget, retain=s.qa['retain'], tokenizer=tok,
                        roles=s.roles, original='original')
    if method == 'seul':  # the annotated spans of the people's bios
        task.forget = s.texts['forget']
        task.span_mask = span_mask(
            tok, [r['text'] for r in s.people],
            [r['spans'] for r in s.people],
            task.forget['input_ids'].shape[1])
    if method == 'loo':
        task.teachers = ['teacher0', 'teacher1']
        task.partitions = [i % 2 for i in range(len(forget['input_ids']))]
    if method == 'kga':
        task.new = s.texts['unseen']
    if method == 'llmu':
        task.forget_pairs, task.retain_pairs = s.forget_pairs, s.retain_pairs
    if method == 'whp':  # labels made here from original and reinforced
        task.forget_texts, task.anchors = s.story, s.anchors
    return task


def config_for(method, **variant):
    """Two steps, a learning rate that moves a tiny model, small batches,
    and no early stop."""
    Config = methods.get(method).Config
    given = {'steps': 2, 'lr': 1e-2, 'micro_batch': 2, 'batch_size': 2,
             'stop_value': 0.0, 'spike_nll': 1e9, 'random_answers': 2,
             'depth': 0.5, **variant}
    known = {f.name for f in fields(Config)}
    return Config(**{k: v for k, v in given.items() if k in known})


@pytest.mark.parametrize('method,variant', VARIANTS,
                         ids=[n + ''.join(f'-{v}' for v in var.values())
                              for n, var in VARIANTS])
def test_every_method_updates_on_every_device(setting, method, variant):
    roles = setting.roles
    task = task_for(setting, method)
    model = roles.copy('original', 'unlearned')
    before = roles.state('unlearned')
    result = methods.run(method, model, task, config_for(method, **variant),
                         progress=False)
    assert result.status == 'completed' and result.steps == 2, \
        f'{result.status}: {result.message}'
    losses = result.series('loss')[1]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    after = roles.state('unlearned')
    assert any(not torch.equal(before[k], after[k]) for k in before), \
        'the method moved the trained weights'
    for p in model.parameters():
        assert p.device.type == setting.device.type
        assert torch.isfinite(p).all()
    # the base stays in its dtype; peft keeps the adapters in float32
    assert model.get_base_model().lm_head.weight.dtype == setting.dtype
    roles.model.set_adapter('original')
    roles.drop('unlearned')


def test_the_answer_mask_holds_exactly_the_answer_tokens(setting):
    tok, pairs = setting.tok, setting.forget_pairs
    batch = setting.qa['forget']
    for i, p in enumerate(pairs):
        answer = tok(' ' + p['answer'], add_special_tokens=False)['input_ids']
        ids = batch['input_ids'][i]
        assert ids[batch['target_mask'][i].bool()].tolist() == \
            answer + [tok.eos_token_id]
        assert ids[batch['answer_mask'][i].bool()].tolist() == answer
        prompt = tok(data.prompt_of(p['question']))['input_ids']
        assert ids[:len(prompt)].tolist() == prompt


@pytest.mark.parametrize('method', ['ga', 'seul'])
def test_the_top_layers_train_on_every_device(setting, method):
    """07 on `cpu` trains every weight of the top layers
    (`models.train_top_layers`): on the setting's device, whatever dtype
    the model came in, they train in float32 and move; the layer below
    and the kept original stay."""
    from workbench.core import models
    from workbench.core.profiles import get_profile
    from .conftest import tiny_model
    model = tiny_model(len(setting.tok), setting.device.type,
                       str(setting.dtype).removeprefix('torch.'))
    model = models.prepare(model, get_profile('smoke'), top_layers=1)
    top, below = model.model.layers[1], model.model.layers[0]
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = methods.run(method, model, task_for(setting, method),
                         config_for(method), progress=False)
    assert result.status == 'completed' and result.steps == 2
    assert all(math.isfinite(x) for x in result.series('loss')[1])
    now = model.state_dict()
    moved = {k for k in start if not torch.equal(start[k], now[k])}
    assert moved and all(k.startswith('model.layers.1.') for k in moved)
    for p in model.parameters():
        assert p.device.type == setting.device.type
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
    with models.reference(model) as ref:
        kept = ref.state_dict()
        assert all(torch.equal(kept[k], start[k]) for k in start)
    assert below.mlp.up_proj.weight.requires_grad is False
    assert top.mlp.up_proj.weight.requires_grad is True
