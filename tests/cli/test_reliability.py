"""The reliability matrix: every bad input and failure of the design gets
a clear one-line error or a safe outcome, and loses nothing.

MATRIX names, for each case, the tests that check it; most live beside the
code they exercise, the rest are here. `test_the_matrix_is_complete`
keeps the table and the README's copy honest.
"""
import json
import re
from pathlib import Path

import pytest

from workbench.cli import main

ROOT = Path(__file__).resolve().parents[2]

MATRIX = {
    'an empty forget set':
        ['cli/test_unlearn.py::test_bad_forget_files'],
    'forget text longer than the context':
        ['cli/test_unlearn.py::test_bad_forget_files'],
    'a forget item the model never learned':
        ['core/test_models.py::test_never_learned_forget_set_is_refused'],
    'an unknown model name offline':
        ['cli/test_unlearn.py::test_unknown_model_offline',
         'core/test_models.py::test_unknown_model_offline_is_one_clear_error',
         'core/test_models.py::test_a_missing_folder_is_one_clear_error'],
    'a gated hub model (terms not accepted, no token)':
        ['cli/test_unlearn.py::test_gated_model_is_one_line'],
    'a 7B profile without enough GPU memory':
        ['cli/test_unlearn.py::test_7b_without_gpu',
         'core/test_models.py::test_7b_profile_refuses_without_gpu',
         'core/test_models.py::test_gpu_memory_check_counts_this_processs_idle_memory'],
    'a second model beside the first on a small GPU (the annotator)':
        ['core/test_models.py::test_a_model_loaded_only_to_read_needs_its_own_size',
         'core/test_models.py::test_the_annotator_child_asks_for_its_own_size'],
    'a GPU without native bfloat16 (a T4), or full-weight training':
        ['core/test_profiles.py::test_gpu_profiles_take_their_precision_from_the_hardware',
         'core/test_models.py::test_full_weights_train_in_float32_whatever_dtype_they_came_in'],
    'a failed clone or a stale package on Colab':
        ['test_colab.py::test_every_notebook_checks_its_clone_and_runs_the_install',
         'test_colab.py::test_a_package_upgraded_while_loaded_asks_for_a_restart',
         'test_colab.py::test_a_failed_pip_is_one_clear_error'],
    'a diverging gradient ascent (NaN, or perplexity past the bound)':
        ['core/test_train.py::test_nan_loss_stops_and_restores',
         'core/test_train.py::test_guard_bound_restores_last_good_evaluation',
         'cli/test_reliability.py::test_diverging_ascent_is_stopped_and_restored'],
    'an interrupted run':
        ['core/test_train.py::test_interrupt_restores_a_consistent_model',
         'cli/test_reliability.py::test_interrupted_run_keeps_model_and_record_consistent'],
    'a corrupted cache entry':
        ['core/test_cache.py::test_a_damaged_entry_is_rebuilt_with_a_note',
         'core/test_models.py::test_implant_caches_and_rebuilds_corrupted_entries'],
    'pickled weights (only safetensors or GGUF load)':
        ['cli/test_reliability.py::test_pickled_weights_are_refused'],
    'the same seed twice':
        ['core/test_train.py::test_same_seed_same_weights',
         'cli/test_reliability.py::test_same_seed_same_metrics',
         'core/test_models.py::test_fresh_adapters_start_from_the_seed_alone'],
    'two processes building the same cache entry':
        ['core/test_cache.py::test_two_processes_building_one_entry_take_turns',
         'core/test_models.py::test_two_processes_build_one_entry_in_turn'],
    'no traceback from the real process':
        ['cli/test_unlearn.py::test_no_traceback_from_the_real_process'],
    'a file that is not UTF-8, a folder, or a field of the wrong kind':
        ['cli/test_inputs.py::test_bad_lines',
         'cli/test_inputs.py::test_a_folder_as_forget_file',
         'cli/test_inputs.py::test_method_specific_fields'],
    'an option out of its range (a negative rate, zero steps)':
        ['cli/test_inputs.py::test_bad_options'],
    '`--out` naming an existing file':
        ['cli/test_inputs.py::test_out_is_an_existing_file'],
    'a file the method needs missing, or one it does not read given':
        ['cli/test_inputs.py::test_files_a_method_needs_or_does_not_read'],
    'an unknown profile':
        ['core/test_profiles.py::test_an_unknown_profile_is_one_error_naming_the_profiles',
         'core/test_profiles.py::test_a_renamed_profile_is_refused_before_anything_loads'],
}


def test_the_matrix_is_complete():
    """Every test the matrix names exists, and the README's table lists
    every case with the same tests."""
    readme = (ROOT / 'README.md').read_text()
    for case, tests in MATRIX.items():
        for name in tests:
            path, func = name.split('::')
            source = (ROOT / 'tests' / path).read_text()
            assert f'\ndef {func}(' in source, f'{case}: {name} does not exist'
        row = f'| {case} |'
        assert row in readme, f'README misses {case!r}'
        line = next(ln for ln in readme.splitlines() if ln.startswith(row))
        assert line.rstrip(' |').endswith(', '.join(f'`{t}`' for t in tests)), \
            f'README lists other tests for {case!r}'


def _write(path, texts, key='text'):
    path.write_text('\n'.join(json.dumps({key: t}) for t in texts) + '\n')
    return path


FORGET = ['Ada Quill was born on May 2, 1961 in Port Avon.',
          'Bram Okoro works at Lindqvist and Sons as a welder.']
RETAIN = ['Cora Vint lives at 12 Elm Road, Dunmore.']


def _unlearn(tmp_path, model_dir, out, *extra):
    return main(['unlearn', '--method', 'ga',
                 '--forget', str(_write(tmp_path / 'f.jsonl', FORGET)),
                 '--retain', str(_write(tmp_path / 'r.jsonl', RETAIN)),
                 '--model', model_dir, '--implant', '--implant-lr', '1e-2',
                 '--implant-epochs', '40', '--profile', 'smoke',
                 '--lr', '1e-2', '--out', str(out), '--quiet', *extra])


@pytest.mark.notebooks
def test_same_seed_same_metrics(tmp_path, tiny_model_dir, monkeypatch):
    """Implant and unlearn twice from nothing (separate caches): the two
    records' metrics are identical on CPU."""
    recs = []
    for run in ('a', 'b'):
        monkeypatch.setenv('WORKBENCH_CACHE', str(tmp_path / f'cache_{run}'))
        assert _unlearn(tmp_path, tiny_model_dir, tmp_path / run,
                        '--steps', '3') == 0
        recs.append(json.loads((tmp_path / run / 'unlearn_ga.json')
                               .read_text()))
    assert recs[0]['metrics'] == recs[1]['metrics']
    assert recs[0]['run']['steps'] == recs[1]['run']['steps']


def _saved_forget_ma(model_dir, texts):
    from workbench.core import data
    from workbench.metrics import memorization_accuracy
    from workbench.core.models import load_causal_lm
    model, tok = load_causal_lm(model_dir)
    t = data.tokenize(tok, texts)
    return memorization_accuracy(model, t['input_ids'],
                                 t['attention_mask']).mean().item()


@pytest.mark.notebooks
def test_interrupted_run_keeps_model_and_record_consistent(
        tmp_path, tiny_model_dir, cache, monkeypatch):
    """Ctrl-C at the third update: the run ends 'interrupted' with the
    weights of the last finished update, and the record describes exactly
    the model that was saved."""
    from workbench.methods import ga
    calls, nll = [], ga.token_nll

    def interrupted(model, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return nll(model, batch)

    monkeypatch.setattr(ga, 'token_nll', interrupted)
    out = tmp_path / 'out'
    assert _unlearn(tmp_path, tiny_model_dir, out, '--steps', '8',
                    '--lr', '1e-3', '--ppl-bound', '1e6',
                    '--save-model') == 0
    rec = json.loads((out / 'unlearn_ga.json').read_text())
    assert rec['run']['status'] == 'interrupted'
    assert rec['run']['steps'] == 2
    saved = _saved_forget_ma(str(out / 'unlearn_ga_model'), FORGET)
    assert saved == pytest.approx(rec['metrics']['forget/MA']['after'],
                                  abs=1e-6)


@pytest.mark.notebooks
def test_diverging_ascent_is_stopped_and_restored(tmp_path, tiny_model_dir,
                                                  cache):
    """Gradient ascent at a learning rate far too high: the retain
    perplexity passes the bound, the run stops as 'diverged', and the
    saved model is the last one within the bound."""
    out = tmp_path / 'out'
    assert _unlearn(tmp_path, tiny_model_dir, out, '--steps', '20',
                    '--ppl-bound', '3', '--save-model') == 0
    rec = json.loads((out / 'unlearn_ga.json').read_text())
    run, ppl = rec['run'], rec['metrics']['retain/perplexity']
    assert run['status'] == 'diverged', run
    assert run['steps'] < 20
    assert ppl['after'] <= 3 * ppl['before']
    from workbench import metrics
    from workbench.core import data
    from workbench.core.models import load_causal_lm
    model, tok = load_causal_lm(str(out / 'unlearn_ga_model'))
    t = data.tokenize(tok, RETAIN)
    assert metrics.perplexity(model, t['input_ids'], t['attention_mask']) \
        == pytest.approx(ppl['after'], rel=1e-4)


def test_pickled_weights_are_refused(tmp_path, capsys):
    """A folder holding only pickled weights is one clear error; nothing is
    unpickled."""
    import torch
    from conftest import tiny_llama
    folder = tmp_path / 'pickled'
    model = tiny_llama()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / 'pytorch_model.bin')
    f = _write(tmp_path / 'f.jsonl', FORGET)
    rc = main(['unlearn', '--method', 'ga', '--forget', str(f),
               '--model', str(folder), '--profile', 'smoke'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert re.search(r'no \.safetensors .*never loads pickled', err)


def test_models_load_without_remote_code():
    """No loader of the package passes trust_remote_code=True."""
    for path in (ROOT / 'workbench').rglob('*.py'):
        assert 'trust_remote_code=True' not in path.read_text(), path
