"""Notebook 07 headless on the smoke profile: SeUL forgets the spans while
keeping a stated share of utility, and is compared with full-sequence
gradient ascent at equal forgetting; the comparison at equal forgetting."""
import pytest

from workbench.experiments.people import WORLD_RESOLUTION


@pytest.mark.notebooks
def test_seul_forgets_spans_and_keeps_utility(smoke_record):
    rec = smoke_record('07_selective_forgetting')
    m, thr, run = rec['metrics'], rec['thresholds'], rec['run']
    # the annotation is precise, and finds most true details
    assert rec['annotation']['precision']['forget'] > 0.95
    assert rec['annotation']['recall']['forget'] > 0.7
    # the spans were memorised, then forgotten: S-EL to the unseen level,
    # S-MA at least nine tenths of the way there (the last hundredths can
    # take the divergence guard's steps; the claim says which happened)
    sma = m['forget/S-MA']
    assert sma['before'] > thr['S-MA'] + 0.2
    assert sma['after'] <= thr['S-MA'] + 0.1 * (sma['before'] - thr['S-MA'])
    assert m['forget/S-EL_2']['after'] <= thr['S-EL_2']
    # and utility kept a stated share
    assert m['retain/MA']['after'] > 0.5 * m['retain/MA']['before']
    assert m['world_facts/probability']['after'] > \
        0.8 * m['world_facts/probability']['before']
    # gradient ascent was stopped at the very span forgetting SeUL reached
    ga, level = rec['ga_after'], run['ga_level']
    assert level['S-MA'] == pytest.approx(max(thr['S-MA'], sma['after']))
    assert run['ga_status'] == 'stopped'
    assert ga['forget/S-MA'] <= level['S-MA']
    assert ga['forget/S-EL_2'] <= level['S-EL_2']
    # the letters are mostly ordinary prose: the details are about a
    # quarter of the tokens, and take about half of full-sequence ascent's
    # first gradient (on bios: two thirds, and over nine tenths)
    assert run['span_token_share'] < 0.35
    assert run['span_token_share'] < run['ga_gradient_on_spans'] < 0.8
    claims = {c['id']: c for c in rec['claims']}
    keeps = claims['seul_keeps_more_utility_than_ga']['holds']
    # both claims ask that the model still speak: everyday-text
    # perplexity within twice the implanted model's
    gen = m['general/perplexity']
    speaks = gen['after'] <= 2 * gen['before']
    # SeUL left the forget letters' ordinary prose; gradient ascent
    # un-learned it, below the level of letters never seen (three seeds:
    # 0.74-0.78 against 0.42-0.46, never-seen 0.67), and SeUL's model
    # still speaks
    assert m['forget/MA']['after'] > ga['forget/MA'] + 0.1
    assert ga['forget/MA'] < thr['MA']
    assert speaks
    # GA stopped at the level above, so the claim compares utility only
    # (the world_facts probability no lower than the measure resolves)
    assert keeps == (m['retain/MA']['after'] > ga['retain/MA']
                     and m['world_facts/probability']['after']
                     > ga['world_facts/probability'] - WORLD_RESOLUTION
                     and speaks)
    assert claims['spans_forgotten']['holds'] == (
        sma['after'] <= thr['S-MA']
        and m['forget/S-EL_2']['after'] <= thr['S-EL_2'] and speaks)


def test_kept_more_at_equal_forgetting():
    from workbench.experiments.selective_forgetting import (
        kept_more_at_equal_forgetting as kept)
    level = {'S-MA': 0.3}
    ours = {'retain/MA': 0.5, 'world_facts/probability': 0.6}

    def theirs(sma, retain, world=0.6):
        return {'forget/S-MA': sma, 'retain/MA': retain,
                'world_facts/probability': world}
    # the other run reached the level: utility decides
    assert kept(ours, theirs(0.3, 0.4), level, 'stopped') == (
        True, 'reached the level')
    assert not kept(ours, theirs(0.2, 0.6), level, 'stopped')[0]
    assert not kept(ours, theirs(0.2, 0.4, world=0.7), level, 'stopped')[0]
    # less knowledge than the measure resolves (0.03) is no less
    assert kept(ours, theirs(0.2, 0.4, world=0.62), level, 'stopped')[0]
    # it did not: only the guard stopping it first counts for ours
    assert kept(ours, theirs(0.4, 0.9), level, 'diverged') == (
        True, 'met the divergence guard before the level')
    assert kept(ours, theirs(0.4, 0.1), level, 'completed') == (
        False, 'did not reach the level')


def test_what_unlearning_trains_on_each_profile():
    from workbench.experiments.selective_forgetting import WEIGHTS_LR, sizes
    # cpu: the top layers' weights, at full fine-tuning's rate
    cpu = sizes('cpu')
    assert cpu['top_layers'] > 0 and cpu['lr'] == WEIGHTS_LR
    # asked for LoRA there, LoRA's rate and the profile's steps
    from workbench.core.profiles import PROFILES
    lora = sizes('cpu', top_layers=0)
    assert lora == dict(top_layers=0, lr=PROFILES['cpu'].unlearn_lr,
                        steps=cpu['steps'])
    assert PROFILES['cpu'].lora and lora['lr'] > 10 * WEIGHTS_LR
    # the top layers on a GPU profile: weights, at the weights' rate
    assert sizes('gpu', top_layers=4)['lr'] == WEIGHTS_LR
    assert sizes('gpu')['lr'] == sizes('gpu', top_layers=0)['lr'] == \
        PROFILES['gpu'].unlearn_lr
    smoke = PROFILES['smoke']
    assert sizes('smoke') == dict(top_layers=0, lr=smoke.unlearn_lr,
                                  steps=smoke.unlearn_steps)
