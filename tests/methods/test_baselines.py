"""The comparison's modern baselines, GradDiff and NPO, checked against
hand computations on a tiny model (SimNPO and RMU: their own files)."""
import contextlib
import math

import pytest
import torch

from workbench import WorkbenchError
from workbench import methods
from workbench.methods import graddiff, npo
from workbench.core.models import keep_reference, reference
from workbench.core.scoring import token_nll

from conftest import tiny_llama
from conftest import random_tokens


def test_graddiff_loss_is_the_weighted_difference(tiny):
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    loss, parts = graddiff.graddiff_loss(tiny, {'forget': f, 'retain': r},
                                         0.5, 2.0)
    by_hand = -0.5 * token_nll(tiny, f) + 2.0 * token_nll(tiny, r)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert parts['forget_nll'] == pytest.approx(token_nll(tiny, f).item())


def test_paired_batches_cover_the_forget_set_with_retain_rows():
    f, r = random_tokens(n=5, seed=1), random_tokens(n=3, seed=2)
    it, accum = graddiff.paired_batches(f, r, graddiff.GradDiffConfig(
        micro_batch=2))
    step = [next(it) for _ in range(accum)]
    assert torch.equal(torch.cat([b['forget']['input_ids'] for b in step]),
                       f['input_ids'])
    for b in step:
        n = b['forget']['input_ids'].shape[0]
        assert b['retain']['input_ids'].shape[0] == n
        for row in b['retain']['input_ids']:
            assert any(torch.equal(row, x) for x in r['input_ids'])


def test_npo_at_the_reference_is_log_two_and_ascends(tiny):
    """At theta = ref the log-ratio is 0: L_NPO = (2 / beta) log 2, and its
    gradient is that of the mean sequence log-likelihood (gradient ascent
    on whole sequences, weighted by sigmoid(0) * 2 = 1)."""
    keep_reference(tiny)
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    with reference(tiny) as ref:
        f = dict(f, reference_logprob=npo.sequence_logprobs(ref, f))
    beta = 0.5
    loss, parts = npo.npo_loss(tiny, {'forget': f, 'retain': r}, beta,
                               1.0, 0.0)
    assert parts['log_ratio'] == pytest.approx(0.0, abs=1e-5)
    assert loss.item() == pytest.approx(2 / beta * math.log(2), rel=1e-5)
    tiny.zero_grad()
    loss.backward()
    g_npo = [p.grad.clone() for p in tiny.parameters()]
    tiny.zero_grad()
    npo.sequence_logprob(tiny, f).mean().backward()
    g_seq = [p.grad.clone() for p in tiny.parameters()]
    for a, b in zip(g_npo, g_seq):
        assert torch.allclose(a, b, atol=1e-5)


def test_npo_weight_fades_once_the_sequence_is_unlikely(tiny):
    """d L / d log p = (2 / n) sigmoid(beta r): far below the reference the
    push vanishes, which bounds the loss."""
    r = torch.tensor([-40.0, 0.0, 40.0], requires_grad=True)
    beta = 0.5
    (-(2 / beta) * torch.nn.functional.logsigmoid(-beta * r).mean()
     ).backward()
    expected = 2 / 3 * torch.sigmoid(beta * r.detach())
    assert torch.allclose(r.grad, expected)
    assert r.grad[0] < 1e-8 < r.grad[1] < r.grad[2]


def test_npo_takes_a_given_reference():
    """Roles hold the original as another adapter, not as the disabled
    one: a given reference replaces the model's own."""
    model = tiny_llama()
    keep_reference(model)
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    far = tiny_llama(seed=1)  # the task's original: another model
    near = npo.sequence_logprobs(model, f)
    config = npo.Config(lr=1e-6, steps=1, micro_batch=4, retain_weight=0.0)
    task = methods.Task(forget=f, retain=r,
                        reference=lambda: contextlib.nullcontext(far))
    res = methods.run('npo', model, task, config, progress=False)
    expected = (near - npo.sequence_logprobs(far, f)).mean().item()
    step = [e for e in res.events if e['kind'] == 'step'][0]
    assert step['log_ratio'] == pytest.approx(expected, abs=1e-4)
    assert abs(expected) > 1e-2  # not the model's own reference (0)


@pytest.mark.parametrize('method', [graddiff, npo])
def test_baselines_lower_the_forget_likelihood(method):
    model = tiny_llama()
    keep_reference(model)
    f, r = random_tokens(n=4, seed=1), random_tokens(n=4, seed=2)
    before = token_nll(model, f).item()
    config = method.Config(lr=1e-2, steps=5, micro_batch=2)
    res = methods.run(method, model, methods.Task(forget=f, retain=r),
                      config, progress=False)
    assert res.status == 'completed' and res.steps == 5
    assert token_nll(model, f).item() > before + 0.1


def test_baselines_need_a_retain_set_and_sane_configs():
    with pytest.raises(WorkbenchError, match='graddiff needs retain'):
        methods.run('graddiff', tiny_llama(),
                    methods.Task(forget=random_tokens(n=4)),
                    graddiff.GradDiffConfig(), progress=False)
    with pytest.raises(WorkbenchError, match='beta > 0'):
        npo.NPOConfig(beta=0)
    with pytest.raises(WorkbenchError, match='weights >= 0'):
        graddiff.GradDiffConfig(retain_weight=-1)


def test_cli_needs_retain_for_the_baselines(tmp_path, capsys,
                                               monkeypatch):
    from workbench.core import models
    from workbench.cli import main

    def load(*args, **kwargs):  # the error comes before anything loads
        raise AssertionError('a model was loaded')
    monkeypatch.setattr(models, 'load_tokenizer', load)
    f = tmp_path / 'f.jsonl'
    f.write_text('{"text": "Ada Quill was born in Port Avon."}\n')
    for method in ('graddiff', 'npo', 'simnpo', 'rmu'):
        assert main(['unlearn', '--method', method, '--forget', str(f),
                     '--profile', 'smoke']) == 2
        assert f'--method {method} needs --retain' in \
            capsys.readouterr().err


@pytest.mark.notebooks
@pytest.mark.parametrize('method', ['npo', 'rmu'])
def test_cli_baseline_on_a_users_files(tmp_path, tiny_model_dir, cache,
                                       method):
    import json
    from workbench.cli import main
    f, r = tmp_path / 'f.jsonl', tmp_path / 'r.jsonl'
    f.write_text('\n'.join(json.dumps({'text': t}) for t in [
        'Ada Quill was born on May 2, 1961 in Port Avon.',
        'Bram Okoro works at Lindqvist and Sons as a welder.']) + '\n')
    r.write_text(json.dumps(
        {'text': 'Cora Vint lives at 12 Elm Road, Dunmore.'}) + '\n')
    assert main(['unlearn', '--method', method, '--forget', str(f),
                 '--retain', str(r), '--model', tiny_model_dir, '--implant',
                 '--implant-lr', '1e-2', '--implant-epochs', '40',
                 '--profile', 'smoke', '--lr', '1e-2', '--steps', '6',
                 '--out', str(tmp_path / 'out'), '--quiet']) == 0
    rec = json.loads((tmp_path / 'out' / f'unlearn_{method}.json')
                     .read_text())
    ma = rec['metrics']['forget/MA']
    assert ma['after'] < ma['before'] - 0.2
    config = rec['run']['config']
    assert config['beta'] == 0.1 if method == 'npo' else \
        config['steering'] == 2.0
