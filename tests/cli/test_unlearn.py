"""The command line: bad input is one clear line and a non-zero exit."""
import json
import subprocess
import sys

import pytest

from workbench.cli import main


def run_cli(capsys, *args):
    rc = main(list(args))
    err = capsys.readouterr().err.strip()
    return rc, err


@pytest.fixture
def files(tmp_path):
    paths = {
        'empty': '',
        'bad': '{"text": "ok"}\nnot json\n',
        'notext': '{"title": "x"}\n',
        'long': json.dumps({'text': 'word ' * 800}) + '\n',
        'badspan': json.dumps({'text': 'abc', 'spans': [[2, 9]]}) + '\n',
    }
    for name, body in paths.items():
        (tmp_path / f'{name}.jsonl').write_text(body)
    return tmp_path


@pytest.mark.parametrize('name, message', [
    ('empty', 'is empty'),
    ('bad', ':2: not valid JSON'),
    ('notext', ':1: each line needs a non-empty "text"'),
    ('long', 'longer than the'),
    ('badspan', 'span [2, 9] is not'),
    ('missing', 'does not exist'),
])
def test_bad_forget_files(files, capsys, name, message):
    rc, err = run_cli(capsys, 'unlearn', '--method', 'ga', '--forget',
                      str(files / f'{name}.jsonl'), '--profile', 'smoke')
    assert rc == 2
    errors = [line for line in err.splitlines() if 'error' in line.lower()]
    assert len(errors) == 1 and 'Traceback' not in err
    assert errors[0].startswith('error: ') and message in errors[0]


def test_unknown_model_offline(files, capsys, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    (files / 'ok.jsonl').write_text('{"text": "hello"}\n')
    rc, err = run_cli(capsys, 'unlearn', '--method', 'ga', '--forget',
                      str(files / 'ok.jsonl'), '--model', 'nobody/nothing')
    assert rc == 2 and 'not a local folder' in err


def test_gated_model_is_one_line(files, capsys, monkeypatch):
    """A gated hub model (Mistral-7B-v0.1, the 7b profile's) without
    accepted terms: one line on what to do, not the hub's traceback."""
    from workbench.core import models

    def refuse(*args, **kwargs):  # what transformers raises for it
        raise OSError('You are trying to access a gated repo.\nMake sure '
                      'to have access to it at https://huggingface.co/'
                      'mistralai/Mistral-7B-v0.1.\n401 Client Error.')
    monkeypatch.setattr(models, 'resolve', lambda name: models.Resolved(
        name, 'hub', name))
    monkeypatch.setattr(models.AutoTokenizer, 'from_pretrained', refuse)
    (files / 'ok.jsonl').write_text('{"text": "hello"}\n')
    rc, err = run_cli(capsys, 'unlearn', '--method', 'ga', '--forget',
                      str(files / 'ok.jsonl'), '--model',
                      'mistralai/Mistral-7B-v0.1')
    assert rc == 2 and '\n' not in err
    assert err.startswith("error: model 'mistralai/Mistral-7B-v0.1' is gated")
    assert 'HF_TOKEN' in err


def test_7b_without_gpu(files, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip('a GPU is present')
    (files / 'ok.jsonl').write_text('{"text": "hello"}\n')
    rc, err = run_cli(capsys, 'unlearn', '--method', 'ga', '--forget',
                      str(files / 'ok.jsonl'), '--profile', '7b')
    assert rc == 2 and 'needs a CUDA GPU' in err


def test_unknown_notebook(capsys):
    rc, err = run_cli(capsys, 'run', '99_nothing')
    assert rc == 2 and 'no single notebook matches' in err


def test_models_and_profiles_list(capsys):
    assert main(['models']) == 0
    out = capsys.readouterr().out
    assert 'smollm2-135m' in out and 'minilm' in out
    assert main(['profiles']) == 0
    assert 'smoke' in capsys.readouterr().out


def test_no_traceback_from_the_real_process(files):
    proc = subprocess.run(
        [sys.executable, '-m', 'workbench', 'unlearn', '--method', 'ga',
         '--forget', str(files / 'bad.jsonl')],
        capture_output=True, text=True)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    assert proc.stderr.strip().startswith('error: ')


@pytest.mark.notebooks
def test_unlearn_own_data_end_to_end(tmp_path, tiny_model_dir, cache,
                                     capsys):
    """`unlearn --implant` on a user's files writes a record whose forget
    MA fell."""
    forget = tmp_path / 'f.jsonl'
    forget.write_text('\n'.join(json.dumps({'text': t}) for t in [
        'Ada Quill was born on May 2, 1961 in Port Avon.',
        'Bram Okoro works at Lindqvist and Sons as a welder.']) + '\n')
    retain = tmp_path / 'r.jsonl'
    retain.write_text(json.dumps(
        {'text': 'Cora Vint lives at 12 Elm Road, Dunmore.'}) + '\n')
    rc = main(['unlearn', '--method', 'ga', '--forget', str(forget),
               '--retain', str(retain), '--model', tiny_model_dir,
               '--implant', '--implant-lr', '1e-2', '--implant-epochs', '40',
               '--profile', 'smoke', '--lr', '1e-2',
               '--steps', '6', '--out', str(tmp_path / 'out'), '--quiet'])
    assert rc == 0
    rec = json.loads((tmp_path / 'out' / 'unlearn_ga.json').read_text())
    ma = rec['metrics']['forget/MA']
    assert ma['after'] < ma['before'] - 0.2
    assert {'EL_10', 'MA'} <= set(rec['thresholds'])
    # no --holdout: the thresholds are the forget texts' own unseen level,
    # measured on the model before the implant
    assert 'before the implant' in rec['thresholds_from']
    from workbench import metrics
    from workbench.core import data, models
    from workbench.core.profiles import get_profile
    base, tok = models.load_causal_lm(tiny_model_dir, get_profile('smoke'))
    t = data.tokenize(tok, [json.loads(line)['text'] for line in
                            forget.read_text().splitlines()])
    expected = metrics.forgetting_thresholds(
        base, t['input_ids'], t['attention_mask'], 10, 10)
    assert rec['thresholds'] == pytest.approx(expected)
    assert 'warning: no --holdout' not in capsys.readouterr().err


def test_thresholds_from_another_kind_of_text_are_named(tmp_path, capsys,
                                                        tiny_model_dir,
                                                        cache):
    """Without --implant or --holdout the thresholds come from the shipped
    people: one warning line says so."""
    forget = tmp_path / 'f.jsonl'
    forget.write_text(json.dumps({'text': 'Ticket 4411: printer offline on '
                                          'floor 3, toner replaced.'}) + '\n')
    main(['unlearn', '--method', 'ga', '--forget', str(forget), '--model',
          tiny_model_dir, '--profile', 'smoke', '--steps', '1', '--out',
          str(tmp_path / 'out'), '--quiet'])
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith('warning: no --holdout')]
    assert len(warnings) == 1 and 'another kind of text' in warnings[0]


@pytest.mark.notebooks
def test_unlearn_seul_own_data_with_spans(tmp_path, tiny_model_dir, cache):
    """`unlearn --method seul` on lines with "spans" records S-MA and S-EL
    before and after, and the span thresholds."""
    texts = ['Ada Quill was born on May 2, 1961 in Port Avon.',
             'Bram Okoro works at Lindqvist and Sons as a welder.']
    lines = []
    for t, detail in zip(texts, ['May 2, 1961', 'Lindqvist and Sons']):
        s = t.index(detail)
        lines.append(json.dumps({'text': t, 'spans': [[s, s + len(detail)]]}))
    forget = tmp_path / 'f.jsonl'
    forget.write_text('\n'.join(lines) + '\n')
    rc = main(['unlearn', '--method', 'seul', '--forget', str(forget),
               '--model', tiny_model_dir, '--implant', '--implant-lr', '1e-2',
               '--implant-epochs', '40', '--profile', 'smoke', '--lr', '1e-2',
               '--steps', '6', '--spans', 'annotated', '--annotator', 'rules',
               '--out', str(tmp_path / 'out'), '--quiet'])
    assert rc == 0
    rec = json.loads((tmp_path / 'out' / 'unlearn_seul.json').read_text())
    sma = rec['metrics']['forget/S-MA']
    assert sma['after'] < sma['before'] - 0.3
    assert {'S-MA', 'S-EL_2', 'EL_10', 'MA'} <= set(rec['thresholds'])
    assert rec['run']['config']['spans'] == 'annotated'


@pytest.mark.parametrize('retain, message', [
    ('{"text": "kept text"}', 'each line needs a non-empty "text" and '
                              '"partition"'),
    ('{"text": "kept", "partition": 1}', 'at least 2 partitions'),
])
def test_loo_needs_partitions_of_two_users(tmp_path, capsys, retain,
                                           message):
    (tmp_path / 'f.jsonl').write_text('{"text": "a secret", "partition": 1}\n')
    (tmp_path / 'r.jsonl').write_text(retain + '\n')
    rc, err = run_cli(capsys, 'unlearn', '--method', 'loo', '--forget',
                      str(tmp_path / 'f.jsonl'), '--retain',
                      str(tmp_path / 'r.jsonl'), '--profile', 'smoke')
    assert rc == 2 and err.count('\n') == 0 and message in err


def test_kga_needs_new_data(tmp_path, capsys, monkeypatch):
    from workbench.core import models

    def load(*args, **kwargs):  # the error comes before anything loads
        raise AssertionError('a model was loaded')
    monkeypatch.setattr(models, 'load_tokenizer', load)
    (tmp_path / 'f.jsonl').write_text('{"text": "forget me"}\n')
    (tmp_path / 'r.jsonl').write_text('{"text": "keep me"}\n')
    rc, err = run_cli(capsys, 'unlearn', '--method', 'kga', '--forget',
                      str(tmp_path / 'f.jsonl'), '--retain',
                      str(tmp_path / 'r.jsonl'), '--profile', 'smoke')
    assert rc == 2 and 'needs --new' in err


def test_loo_and_kga_run_on_a_users_files(tmp_path, tiny_model_dir, cache):
    lines = {
        'f': [{'text': 'My PIN code is 6 6 0 4 8 7.', 'partition': 'ann',
               'prefix': 'My PIN code is', 'secret': '6 6 0 4 8 7'}],
        'r': [{'text': 'Ann likes long walks by the river.',
               'partition': 'ann'},
              {'text': 'Bob keeps bees behind his house.',
               'partition': 'bob'}],
        'n': [{'text': 'Cleo repairs old clocks in her shop.'}],
    }
    for name, rows in lines.items():
        (tmp_path / f'{name}.jsonl').write_text(
            '\n'.join(json.dumps(r) for r in rows) + '\n')
    common = ['--forget', str(tmp_path / 'f.jsonl'), '--retain',
              str(tmp_path / 'r.jsonl'), '--holdout', str(tmp_path / 'n.jsonl'),
              '--profile', 'smoke', '--model', tiny_model_dir,
              '--implant-epochs', '1', '--steps', '1',
              '--out', str(tmp_path / 'out'), '--quiet']
    assert main(['unlearn', '--method', 'loo', *common]) == 0
    rec = json.loads((tmp_path / 'out' / 'unlearn_loo.json').read_text())
    assert {'forget/MA', 'forget/nll', 'retain/perplexity',
            'holdout/perplexity', 'forget/exposure'} <= set(rec['metrics'])
    assert rec['run']['steps'] == 1
    assert set(rec['run']['roles']) >= {'student', 'teacher0', 'teacher1'}
    assert main(['unlearn', '--method', 'kga', *common, '--new',
                 str(tmp_path / 'n.jsonl')]) == 0
    rec = json.loads((tmp_path / 'out' / 'unlearn_kga.json').read_text())
    assert 'forget/jsd_to_retrained' in rec['metrics']
    assert rec['thresholds']['new_gap'] > 0
