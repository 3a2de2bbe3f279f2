"""`unlearn` checks every option and input file before it loads anything:
each bad input is one line on stderr and exit code 2, with nothing loaded
and nothing written."""
import json

import pytest

from workbench.cli import main

GOOD = '{"text": "Ada Quill was born in Port Avon."}\n'


@pytest.fixture
def nothing_loads(monkeypatch):
    def load(*args, **kwargs):
        raise AssertionError('something was loaded')
    for name in ('load_tokenizer', 'load_causal_lm', 'resolve'):
        monkeypatch.setattr(f'workbench.core.models.{name}', load)


def _file(tmp_path, name, body):
    path = tmp_path / name
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    return str(path)


def _refused(capsys, tmp_path, *args):
    """Run `unlearn` (results into tmp_path/out); return its one error."""
    out = tmp_path / 'out'
    rc = main(['unlearn', *args, '--profile', 'smoke', '--out', str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert err.startswith('error: ')
    assert not out.exists(), 'nothing is written'
    return err


LINES = {
    'not UTF-8': (b'{"text": "caf\xe9"}\n', ':1: not UTF-8 text (byte 0xe9)'),
    'text a number': ('{"text": 5}\n', '"text" must be a string, got 5'),
    'text empty': (GOOD + '{"text": "  "}\n', ':2: each line needs a '
                                               'non-empty "text" field'),
    'spans a string': ('{"text": "abc", "spans": "0-2"}\n',
                       '"spans" must be a list'),
    'span of strings': ('{"text": "abc", "spans": [[0, "2"]]}\n',
                        'span [0, "2"] is not [start, end]'),
    'span outside the text': ('{"text": "abc", "spans": [[2, 9]]}\n',
                              'span [2, 9] is not'),
    'a list, not an object': ('["abc"]\n', 'each line must be a JSON object'),
    'question a list': ('{"text": "abc", "question": ["why"]}\n',
                        '"question" must be a string'),
}


@pytest.mark.parametrize('case', LINES)
def test_bad_lines(case, tmp_path, capsys, nothing_loads):
    body, message = LINES[case]
    err = _refused(capsys, tmp_path, '--method', 'ga', '--forget',
                   _file(tmp_path, 'f.jsonl', body))
    assert message in err


def test_a_folder_as_forget_file(tmp_path, capsys, nothing_loads):
    (tmp_path / 'data').mkdir()
    err = _refused(capsys, tmp_path, '--method', 'ga', '--forget',
                   str(tmp_path / 'data'))
    assert 'is a folder, not a JSONL file' in err


def test_a_bad_retain_file_is_found_before_loading(tmp_path, capsys,
                                                   nothing_loads):
    err = _refused(capsys, tmp_path, '--method', 'npo', '--forget',
                   _file(tmp_path, 'f.jsonl', GOOD), '--retain',
                   _file(tmp_path, 'r.jsonl', '{"text": true}\n'))
    assert 'r.jsonl:1: "text" must be a string' in err


OPTIONS = {
    'negative lr': (['--lr', '-0.001'], 'argument --lr: must be above 0'),
    'zero lr': (['--lr', '0'], 'argument --lr: must be above 0'),
    'lr not a number': (['--lr', 'fast'], "'fast' is not a number"),
    'zero steps': (['--steps', '0'], 'argument --steps: must be at least 1'),
    'fractional steps': (['--steps', '2.5'], "'2.5' is not a whole number"),
    'quantile above 1': (['--method', 'seul', '--quantile', '1.5'],
                         'argument --quantile: must be above 0 and at '
                         'most 1'),
    'quantile 0': (['--method', 'seul', '--quantile', '0'],
                   'must be above 0'),
    'infinite ppl bound': (['--ppl-bound', 'inf'], 'must be above 1'),
    'ppl bound below 1': (['--ppl-bound', '0.5'], 'must be above 1'),
    'negative batch size': (['--batch-size', '-2'], 'must be at least 0'),
    'zero implant epochs': (['--implant-epochs', '0'], 'must be at least 1'),
    'unknown method': (['--method', 'magic'], "invalid choice: 'magic'"),
}


@pytest.mark.parametrize('case', OPTIONS)
def test_bad_options(case, tmp_path, capsys, nothing_loads):
    extra, message = OPTIONS[case]
    method = [] if '--method' in extra else ['--method', 'ga']
    err = _refused(capsys, tmp_path, *method, *extra, '--forget',
                   _file(tmp_path, 'f.jsonl', GOOD))
    assert message in err


def test_out_is_an_existing_file(tmp_path, capsys, nothing_loads):
    taken = _file(tmp_path, 'results.txt', 'mine')
    rc = main(['unlearn', '--method', 'ga', '--forget',
               _file(tmp_path, 'f.jsonl', GOOD), '--out', taken])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert 'is a file; give a folder' in err
    assert open(taken).read() == 'mine'
    assert main(['run', '00_tour', '--out', taken]) == 2
    assert 'is a file; give a folder' in capsys.readouterr().err


@pytest.mark.parametrize('method, extra, message', [
    ('ga', ['--new', 'N'], '--new is not read by --method ga'),
    ('llmu', ['--holdout', 'H'], '--holdout is not read by --method llmu'),
    ('graddiff', [], '--method graddiff needs --retain'),
    ('llmu', [], '--method llmu needs --retain: normal question-answer'),
    ('kga', ['--retain', 'R'], '--method kga needs --new: text of the same'),
    ('whp', [], '--method whp needs --anchors'),
])
def test_files_a_method_needs_or_does_not_read(method, extra, message,
                                               tmp_path, capsys,
                                               nothing_loads):
    err = _refused(capsys, tmp_path, '--method', method, '--forget',
                   _file(tmp_path, 'f.jsonl', GOOD), *extra)
    assert message in err


def test_method_specific_fields(tmp_path, capsys, nothing_loads):
    pair = json.dumps({'question': 'Why?', 'answer': 'So.'}) + '\n'
    err = _refused(capsys, tmp_path, '--method', 'llmu', '--forget',
                   _file(tmp_path, 'f.jsonl', GOOD), '--retain',
                   _file(tmp_path, 'r.jsonl', pair))
    assert 'f.jsonl:1: each line needs a non-empty "question" and ' \
           '"answer"' in err
    err = _refused(capsys, tmp_path, '--method', 'whp', '--forget',
                   _file(tmp_path, 'f.jsonl', GOOD), '--anchors',
                   _file(tmp_path, 'a.jsonl', '{"term": "Avon"}\n'))
    assert 'a.jsonl:1: each line needs a non-empty "term" and "generic"' \
        in err
    err = _refused(capsys, tmp_path, '--method', 'loo', '--forget',
                   _file(tmp_path, 'f.jsonl', '{"text": "a", '
                                              '"partition": [1]}\n'),
                   '--retain', _file(tmp_path, 'r.jsonl', GOOD))
    assert '"partition" must be a string or a whole number' in err
