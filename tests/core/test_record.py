"""The results record, and one record of several seeds."""
import pytest

from workbench.core import record


def seeded(seed, forget_ma, holds):
    return {'notebook': '03_knowledge_unlearning', 'profile': 'smoke',
            'seed': seed, 'model': 'smollm2-135m', 'elapsed_s': 10.0,
            'peak_rss_mb': 1000 + seed,
            'metrics': {'forget/MA': {'before': 0.9, 'after': forget_ma}},
            'thresholds': {'MA': 0.3},
            'claims': [{'id': 'forgotten', 'holds': holds,
                        'evidence': f'MA {forget_ma}'}]}


def test_merge_keeps_each_seed_and_counts_the_claims():
    runs = [seeded(0, 0.2, True), seeded(1, 0.4, False), seeded(2, 0.3, True)]
    rec = record.merge(runs)
    assert rec['seeds'] == [0, 1, 2] and rec['runs'] == runs
    after = rec['metrics']['forget/MA']['after']
    assert after['values'] == [0.2, 0.4, 0.3]
    assert after['mean'] == pytest.approx(0.3)
    assert after['std'] == pytest.approx(0.1)  # the sample's
    assert (after['min'], after['max']) == (0.2, 0.4)
    assert rec['metrics']['forget/MA']['before']['std'] == 0
    assert rec['thresholds']['MA']['mean'] == pytest.approx(0.3)
    claim = rec['claims'][0]
    assert (claim['holds_in'], claim['seeds'], claim['holds']) == (2, 3, False)
    assert claim['evidence'] == {'0': 'MA 0.2', '1': 'MA 0.4', '2': 'MA 0.3'}
    assert rec['elapsed_s'] == 30.0 and rec['peak_rss_mb'] == 1002


def test_merge_of_one_seed_and_of_a_claim_some_seeds_did_not_test():
    one = record.merge([seeded(5, 0.2, True)])
    assert one['metrics']['forget/MA']['after']['std'] == 0
    assert one['claims'][0]['holds'] and one['claims'][0]['seeds'] == 1
    runs = [seeded(0, 0.2, True), seeded(1, 0.3, True)]
    runs[1]['claims'] = []
    runs[1]['metrics']['extra'] = {'after': 1.0}
    rec = record.merge(runs)
    assert rec['claims'][0]['seeds'] == 1
    assert rec['metrics']['extra']['after']['values'] == [None, 1.0]
    assert rec['metrics']['extra']['after']['mean'] == 1.0


def test_a_record_says_the_device_and_dtype_it_ran_in():
    from workbench.core.profiles import get_profile
    rec = record.Record('00_tour', get_profile('cpu'), 0, 'smollm2-135m')
    assert (rec.data['profile'], rec.data['device'], rec.data['dtype']) == \
        ('cpu', 'cpu', 'float32')
    merged = record.merge([dict(rec.data, seed=0, elapsed_s=1,
                                peak_rss_mb=1)])
    assert merged['dtype'] == 'float32'
