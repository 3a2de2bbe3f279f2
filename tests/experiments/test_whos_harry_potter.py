"""Notebook 06 (Who's Harry Potter): its familiarity measure, and the notebook
headless on the smoke profile: familiarity falls, fluency stays."""
import pytest

from workbench.experiments.whos_harry_potter import mentions


def test_familiarity_counts_terms_the_prompt_did_not_give():
    anchors = [{'term': 'Gloamhold', 'generic': 'the school'}]
    assert mentions(' the gloamhold towers', anchors) == ['Gloamhold']
    assert mentions(' Gloamholder', anchors) == []
    # a term the prompt already gave is no sign of familiarity
    assert mentions(' Gloamhold again', anchors,
                    'Tamsin went to Gloamhold') == []
    assert mentions(' Gloamhold', anchors, 'Tamsin went to') == \
        ['Gloamhold']
    anchors.append({'term': "Windle's Cross", 'generic': 'the village'})
    assert mentions(' Gloamhold', anchors, "Tamsin's gloamhold") == []
    assert mentions(" Windle's Cross", anchors, "Tamsin's dog") == \
        ["Windle's Cross"]


@pytest.mark.notebooks
def test_whp_lowers_familiarity(smoke_record):
    rec = smoke_record('06_whos_harry_potter')
    m, thr = rec['metrics'], rec['thresholds']
    fam, p = m['target/familiarity'], m['target/next_token_probability']
    # the baseline knows the story far better than the base model ...
    assert fam['before'] > thr['base/familiarity'] + 0.3
    assert p['before'] > 10 * thr['base/next_token_probability']
    # ... and after fine-tuning on generic labels, far less so (without
    # the anchored-term exclusion it fell by a fifth)
    assert fam['after'] < 0.5 * fam['before']
    assert p['after'] < 0.7 * p['before']
    claims = {c['id']: c['holds'] for c in rec['claims']}
    assert claims['familiarity_drops']
    # general knowledge (the paper's benchmarks) and the perplexity of
    # everyday text stay about where they were (on half the story the same
    # updates doubled the perplexity)
    w, ppl = m['world_facts/probability'], m['retain/perplexity']
    assert w['after'] >= 0.9 * w['before']
    assert ppl['after'] <= 1.25 * ppl['before']
    assert claims['utility_nearly_unchanged']
    # larger alpha: labels further from the story, and less fluent
    stats = rec['label_stats']
    assert stats[0]['label = story token'] > stats[-1]['label = story token']
    assert stats[0]['base log-prob of labels'] > \
        stats[-1]['base log-prob of labels']
