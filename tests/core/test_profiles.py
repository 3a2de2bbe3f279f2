"""Profiles, and the one sizes table of each experiment keyed by them."""
from dataclasses import replace

import pytest

from workbench import WorkbenchError
from workbench.core.profiles import PROFILES, get_profile, sizes
from workbench.experiments import (comparison, fairsisa, kga, llm_unlearning,
                                   loo_ensemble, whos_harry_potter)

SIZED = (comparison, fairsisa, kga, llm_unlearning, loo_ensemble,
         whos_harry_potter)


@pytest.mark.parametrize('module', SIZED, ids=lambda m: m.__name__)
def test_every_experiment_sizes_every_profile(module):
    assert set(module.SIZES) == set(PROFILES)
    shapes = {tuple(sorted(row)) for row in module.SIZES.values()}
    assert len(shapes) == 1, 'every profile sets the same sizes'


def test_an_unknown_profile_is_one_error_naming_the_profiles():
    with pytest.raises(WorkbenchError, match='smoke, cpu, gpu, 7b'):
        get_profile('laptop')
    with pytest.raises(WorkbenchError, match="unknown profile 'laptop'"):
        sizes(kga.SIZES, 'laptop')
    with pytest.raises(WorkbenchError,
                       match=r"unknown size\(s\) \['shards'\]"):
        sizes(kga.SIZES, 'smoke', shards=3)
    assert sizes(kga.SIZES, get_profile('cpu'), epochs=2)['epochs'] == 2
    assert kga.SIZES['cpu']['epochs'] == 8, 'the table itself is unchanged'


@pytest.mark.parametrize('module', SIZED, ids=lambda m: m.__name__)
def test_a_renamed_profile_is_refused_before_anything_loads(module,
                                                            monkeypatch):
    """A profile of a name no table knows fails at once, the same way in
    every experiment, before data or a model is read."""
    def loads(*args, **kwargs):
        raise AssertionError('loaded something')
    monkeypatch.setattr('workbench.core.models.load_causal_lm', loads)
    monkeypatch.setattr('workbench.core.models.load_encoder', loads)
    monkeypatch.setattr('workbench.core.roles.Roles.__init__', loads)
    monkeypatch.setattr('workbench.core.data.people', loads)
    monkeypatch.setattr('workbench.core.data.toxicity', loads)
    mine = replace(PROFILES['cpu'], name='mine')
    with pytest.raises(WorkbenchError,
                       match="unknown profile 'mine'; choose one of smoke"):
        module.setup(mine, progress=False)


@pytest.mark.parametrize('capability,lora,dtype', [
    ((9, 0), True, 'bfloat16'), ((8, 0), True, 'bfloat16'),
    ((7, 5), True, 'float16'), ((7, 0), True, 'float16'),
    ((9, 0), False, 'float32'), ((7, 5), False, 'float32')])
def test_gpu_profiles_take_their_precision_from_the_hardware(
        monkeypatch, capability, lora, dtype):
    import torch
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_device_capability',
                        lambda *a: capability)
    for name in ('gpu', '7b'):
        p = get_profile(name, lora=lora)
        assert p.dtype == 'auto' and p.precision == dtype
        assert p.as_dict()['dtype'] == dtype  # the record says what ran
    # a profile that names its dtype keeps it; a CPU computes in float32
    assert get_profile('gpu', dtype='bfloat16').precision == 'bfloat16'
    assert get_profile('gpu', dtype='auto', device='cpu').precision == \
        'float32'


def test_a_profile_of_ones_own_from_a_json_file(tmp_path):
    path = tmp_path / 'mine.json'
    path.write_text('{"base": "cpu", "model": "my/folder", "n_world": 8}')
    p = get_profile(str(path))
    assert (p.name, p.model, p.n_world) == ('cpu', 'my/folder', 8)
    assert p.lora == get_profile('cpu').lora  # the rest is the base's
    assert get_profile(str(path), n_world=4).n_world == 4
    for text, says in (('{"model": "x"}', '"base" must name'),
                       ('{"base": "cpu", "colour": 1}', 'unknown profile'),
                       ('{"base": "cpu", "name": "x"}', "base's"),
                       ('[1]', 'not a JSON object'),
                       ('{"base": ', 'not readable JSON')):
        path.write_text(text)
        with pytest.raises(WorkbenchError, match=says):
            get_profile(str(path))


def test_an_empty_profile_is_this_machines_default(monkeypatch):
    monkeypatch.delenv('WORKBENCH_PROFILE', raising=False)
    assert get_profile('').name == 'cpu'
    monkeypatch.setenv('WORKBENCH_PROFILE', 'smoke')
    assert get_profile('').name == 'smoke'
