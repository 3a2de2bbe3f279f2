"""The shipped data sets: reproducible, well formed, fictitious."""
import importlib.util
import json

import pytest

from workbench.core import data
from workbench.core.paths import DATA_DIR

SETS = {'people': 'make_people', 'world_facts': 'make_world_facts',
        'canaries': 'make_canaries', 'toxicity': 'make_toxicity',
        'harmful': 'make_harmful', 'letters': 'make_letters'}


@pytest.mark.parametrize('name', SETS)
def test_generator_reproduces_the_file(name, tmp_path):
    script = DATA_DIR / name / f'{SETS[name]}.py'
    spec = importlib.util.spec_from_file_location(SETS[name], script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path / 'out.jsonl')
    shipped = DATA_DIR / data.SETS[name]
    assert (tmp_path / 'out.jsonl').read_bytes() == shipped.read_bytes()
    assert (DATA_DIR / name / 'README.md').exists()


def test_story_files_are_reproduced(tmp_path):
    script = DATA_DIR / 'story' / 'make_story.py'
    spec = importlib.util.spec_from_file_location('make_story', script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ('story', 'anchors', 'familiarity'):
        assert (tmp_path / f'{name}.jsonl').read_bytes() == \
            (DATA_DIR / 'story' / f'{name}.jsonl').read_bytes()
    # every familiarity answer is in the story, and names an anchored term
    from workbench.experiments import whos_harry_potter as story
    text = ' '.join(r['text'] for r in story.read('story'))
    for p in story.read('familiarity'):
        assert p['story'].strip() in text
        assert story.mentions(p['story'], story.read('anchors'))


def test_harmful_pairs_and_splits():
    from workbench.experiments import llm_unlearning as harmful
    train = harmful.rows('forget', 'train')
    test = harmful.rows('forget', 'test')
    assert len(train) == 112 and len(test) == 32
    assert not {r['question'] for r in train} & {r['question'] for r in test}
    assert all(r['answer'] != r['safe_answer'] for r in train)
    assert len(harmful.rows('normal', 'train')) == 34


def test_people_spans_and_splits():
    rows = [dict(r) for r in data.load('people')]
    assert {r['split'] for r in rows} == {'forget', 'retain', 'unseen'}
    for r in rows:
        assert r['spans'] and all(r['text'][s:e] for s, e, _ in r['spans'])
        assert r['text'][r['spans'][0][0]:r['spans'][0][1]] in r['text']
        assert any(k == 'name' and r['text'][s:e] == r['name']
                   for s, e, k in r['spans'])
        for qa in r['qa']:
            assert len(qa['perturbed_answers']) == 3
            assert qa['paraphrased_answer'] not in qa['perturbed_answers']
    assert len(data.people('forget', 4)) == 4


def test_letters_carry_their_persons_details():
    people = {r['id']: dict(r) for r in data.load('people')}
    letters = [dict(r) for r in data.load('letters')]
    assert [r['id'] for r in letters] == list(people)
    for r in letters:
        p = people[r['id']]
        assert r['split'] == p['split'] and r['name'] == p['name']
        details = {k: p['text'][s:e] for s, e, k in p['spans']}
        assert 2 <= len(r['spans']) <= 4
        for s, e, k in r['spans']:
            assert r['text'][s:e] == details[k]
        # mostly ordinary prose: the details are a small share of it
        assert sum(e - s for s, e, _ in r['spans']) < 0.35 * len(r['text'])
    assert [r['id'] for r in data.letters('retain', 3)] == [
        r['id'] for r in data.people('retain', 3)]


def test_a_first_read_prints_no_progress_bars(tmp_path, monkeypatch,
                                             capsys):
    import datasets
    monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE', tmp_path)
    datasets.enable_progress_bars()
    assert len(data.people('unseen', 2)) == 2
    assert list(tmp_path.iterdir())  # the set was cached just now
    assert capsys.readouterr().err == ''
    assert datasets.is_progress_bar_enabled()  # the user's setting is kept


def test_world_facts():
    facts = data.world_facts()
    assert len(facts) >= 100
    assert all(f['choices'][f['label']] == f['answer'] for f in facts)
    assert len({f['question'] for f in facts}) == len(facts)


def test_canaries_match_their_space():
    for c in data.load('canaries'):
        digits = c['secret'].split()
        assert len(digits) == c['digits'] and all(d.isdigit() for d in digits)
        assert c['text'] == f"{c['prefix']} {c['secret']}."


def test_toxicity_train_is_skewed_and_evaluation_balanced():
    import collections
    rows = data.toxicity()
    assert {r['split'] for r in rows} == {'train', 'val', 'test'}
    rate = collections.defaultdict(list)
    for r in rows:
        rate[r['split'], r['topic']].append(r['label'])
        assert (r['identity'] == '') == (r['topic'] == 'none')
        assert r['identity'] in r['text'].lower()
    mean = {k: sum(v) / len(v) for k, v in rate.items()}
    # the training data ties a topic to toxicity; the test split does not
    assert mean['train', 'sexual_orientation'] > 2 * mean['train', 'none']
    for topic in ('sexual_orientation', 'religion', 'age'):
        assert abs(mean['test', topic] - 0.5) < 0.02
    assert ('test', 'none') not in mean
    with pytest.raises(data.WorkbenchError, match='split'):
        data.toxicity('dev')


def test_read_jsonl_accepts_spans_and_qa(tmp_path):
    p = tmp_path / 'x.jsonl'
    p.write_text(json.dumps({'text': 'Ann Lee', 'spans': [[0, 3]],
                             'question': 'Who?', 'answer': 'Ann'}) + '\n\n')
    assert data.read_jsonl(p)[0]['spans'] == [[0, 3]]
