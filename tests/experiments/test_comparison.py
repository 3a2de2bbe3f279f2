"""Notebook 08 headless on the smoke profile, and the comparison's parts."""
import pytest

from workbench import WorkbenchError
from workbench.core import data
from workbench.experiments import comparison as compare


def test_budget_refuses_unknown_methods_and_bad_values():
    with pytest.raises(WorkbenchError, match='unknown'):
        compare.Budget(methods=('ga', 'sisa'))
    with pytest.raises(WorkbenchError, match='steps'):
        compare.Budget(steps=0)


def test_seul_spans_are_the_personal_details_of_the_answers(smol_tokenizer):
    from workbench.metrics.qa import qa_batch
    person = data.people('forget', 1)
    qa = person[0]['qa']
    batch = qa_batch(smol_tokenizer, [q['question'] for q in qa],
                     [q['answer'] for q in qa])
    mask = compare.detail_mask(smol_tokenizer, person, batch)
    assert not (mask & ~batch['target_mask'].bool()).any()  # answers only
    p = person[0]
    values = {kind: p['text'][s:e] for s, e, kind in p['spans']}
    for i, q in enumerate(qa):
        marked = smol_tokenizer.decode(batch['input_ids'][i][mask[i]])
        # the name and the asked-for detail are marked, and not the rest
        assert p['name'].split()[0] in marked
        assert values[q['field']].split()[-1] in marked
        assert mask[i].sum() < batch['target_mask'][i].sum()


def test_whp_anchors_map_each_detail_to_another_persons():
    forget, holdout = data.people('forget', 2), data.people('unseen', 2)
    anchors = compare.anchors_for(forget, holdout)
    assert {a['term'] for a in anchors} >= {p['name'] for p in forget}
    assert all(a['term'] != a['generic'] for a in anchors)
    names = {a['term']: a['generic'] for a in anchors}
    assert names[forget[0]['name']] == holdout[0]['name']


def test_tagged_events_carry_the_method_name():
    seen = []
    compare.tagged(seen.append, 'npo', {'step': 2, 'kind': 'eval',
                                        'forget/MA': 0.5, 'loss': 1.0})
    assert seen == [{'step': 2, 'kind': 'eval', 'npo forget MA': 0.5}]


def test_forgetting_has_a_price_only_where_a_model_still_works():
    def rows(**methods):  # method -> (forget ES, model utility)
        out = {'original': {'forget/ES': 0.9, 'model_utility': 0.5}}
        out.update({m: {'forget/ES': es, 'model_utility': u}
                    for m, (es, u) in methods.items()})
        return out
    price = compare.forgetting_has_a_price
    # halved and paid, one still working (0.3 >= half of 0.5)
    holds, evidence = price(rows(ga=(0.2, 0.0), npo=(0.3, 0.3)), ['ga', 'npo'])
    assert holds
    assert 'ga 0.000 (no longer works)' in evidence
    assert 'still working (at least 0.250): npo' in evidence
    # only ruined models halved it: nothing said of the price
    assert not price(rows(ga=(0.2, 0.0), npo=(0.3, 0.1)), ['ga', 'npo'])[0]
    # one halved it for free
    assert not price(rows(ga=(0.2, 0.4), npo=(0.3, 0.5)), ['ga', 'npo'])[0]
    # a method that did not halve ES is not asked
    assert price(rows(ga=(0.2, 0.4), npo=(0.6, 0.5)), ['ga', 'npo'])[0]
    holds, evidence = price(rows(ga=(0.6, 0.5)), ['ga'])
    assert not holds and 'none halved it' in evidence


@pytest.mark.notebooks
def test_every_method_against_the_oracle(smoke_record):
    rec = smoke_record('08_comparison', {'steps': 6, 'relearn_steps': 3})
    rows = rec['methods']
    o, r = rows['original'], rows['retrained']
    assert set(rows) == {'original', 'retrained', *compare.METHODS}
    # the original knows the forget answers; the oracle never saw them
    assert o['forget/ES'] > 0.8 and o['forget/MA'] > 0.95
    assert r['forget/ES'] < 0.5 * o['forget/ES']
    assert o['forget_quality'] < 0.05 and r['forget_quality'] == 1.0
    # MUSE's PrivLeak on 1 - AUC: the original's forget answers look seen
    # to every attack, and it sits near -100; the oracle is the zero
    for attack in compare.MIA_ATTACKS:
        assert o[f'mia/{attack}'] > 0.8 > r[f'mia/{attack}'], attack
    assert o['privleak'] < -80 and r['privleak'] == 0
    assert r['mia/ref'] == 0.5  # its own reference
    assert len(rec['differences']) == len(compare.DIFFERENCES)
    for m in compare.METHODS:
        row = rows[m]
        assert 1 <= row['steps'] <= 6, m
        # every method moved the model away from the forget answers
        assert row['forget/ES'] < o['forget/ES'] - 0.15, m
        assert row['forget/MA'] < o['forget/MA'], m
    # gradient ascent forgets and pays in utility; the leave-one-out
    # ensemble lands near the oracle and keeps more
    assert rows['ga']['model_utility'] < 0.8 * o['model_utility']
    assert abs(rows['loo']['forget/ES'] - r['forget/ES']) < 0.15
    assert rows['loo']['model_utility'] > rows['ga']['model_utility'] + 0.2
    # relearning on half of the forget people brings the others back
    # after ascent, not for the oracle
    ga = rows['ga']['relearn/ES_after'] - rows['ga']['relearn/ES_before']
    oracle = r['relearn/ES_after'] - r['relearn/ES_before']
    assert ga > oracle + 0.1
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims['oracle_forgot'] and claims['every_method_lowers_extraction']
    assert claims['relearning_recovers_ascent']


def test_helper_roles_are_trained_when_their_method_first_runs(
        monkeypatch, cache):
    from workbench.core.roles import Roles
    fitted = []

    def fit(self, name, texts, epochs, lr=None, seed=0, desc=None,
            start=None):  # an untrained adapter, recorded
        fitted.append((name, len(texts), epochs, start))
        self.add(name)
        self.keys[name] = name
        return {}
    monkeypatch.setattr(Roles, 'fit', fit)
    s = compare.setup('smoke', progress=False)
    assert [f[0] for f in fitted] == ['original', 'retrained']
    assert compare.helper_roles(s, 'ga') == []
    assert compare.helper_roles(s, 'loo') == s.teachers
    # every person in exactly one teacher's partition
    sizes = s.sizes
    assert sum(f[1] for f in fitted[2:]) == 4 * (sizes['forget']
                                                 + sizes['retain'])
    compare.helper_roles(s, 'kga')
    compare.helper_roles(s, 'whp')
    compare.helper_roles(s, 'loo')  # once only
    names = [f[0] for f in fitted]
    assert names == ['original', 'retrained', *s.teachers, 'A_f', 'A_n',
                     'reinforced']
    assert fitted[-1][2:] == (sizes['reinforce'], 'original')
