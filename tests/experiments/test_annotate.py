"""The two-stage annotation of sensitive spans: the rules, the model's stages,
the cache and the child process."""
from types import SimpleNamespace

import pytest
import torch

from workbench.core import data
from workbench.experiments import annotate
from workbench.metrics import char_precision_recall


def test_rules_find_the_people_details():
    row = data.people('forget', 1)[0]
    found = {row['text'][s:e] for s, e, _ in annotate.rule_spans(
        row['text'])}
    assert {'Peter Fisher', 'May 24, 1960', 'juancampos@hotmail.com',
            '489-241-1578', '6593 Ramos Pike'} <= found
    assert 'He' not in found and 'May' not in found


def test_rule_annotation_is_precise_on_the_people(cache):
    rows = data.people('unseen', 10)
    res = annotate.annotate([r['text'] for r in rows], progress=False)
    pr = [char_precision_recall(s, r['spans'], len(r['text']))
          for s, r in zip(res['spans'], rows)]
    assert min(p for p, _ in pr) > 0.95
    assert sum(r for _, r in pr) / len(pr) > 0.75
    assert res['report']['model'] == 'rules'


def test_llm_annotation_runs_both_stages_and_caches(cache, tiny_model_dir,
                                                    smol_tokenizer):
    from workbench.core.models import load_causal_lm
    model, tok = load_causal_lm(tiny_model_dir)
    texts = [r['text'] for r in data.people('forget', 2)]
    res = annotate.annotate(texts, model, tok, 'tiny', progress=False)
    rep = res['report']
    assert rep['rule_confirmed'] > 0 and rep['model'] == 'tiny'
    assert rep['llm_confirmed'] + rep['rejected'] == rep['llm_proposed']
    assert annotate.cached(texts, 'tiny')
    assert annotate.annotate(texts, model_name='tiny') == res


def test_annotation_by_name_runs_in_a_child_and_reads_its_cache(
        cache, tiny_model_dir, capfd):
    from workbench.core.models import load_causal_lm
    from workbench.core.profiles import get_profile
    texts = [r['text'] for r in data.people('forget', 2)]
    name = str(tiny_model_dir)
    res = annotate.annotate_with(texts, name, get_profile('smoke'))
    assert 'annotating' in capfd.readouterr().err  # the child's progress
    assert annotate.cached(texts, name)
    assert not list((cache / 'annotations').glob('*.job'))
    model, tok = load_causal_lm(tiny_model_dir)
    assert res == annotate.annotate(texts, model, tok, name, cache=False,
                                    progress=False)


def test_a_failing_annotator_child_is_one_line(cache, tmp_path):
    from workbench import WorkbenchError
    from workbench.core.profiles import get_profile
    with pytest.raises(WorkbenchError, match='annotating with .* failed: '
                                             '.*is not a local folder'):
        annotate.annotate_with(['Ann Lee was born in Leeds.'],
                               str(tmp_path / 'nowhere'),
                               get_profile('smoke'), progress=False)
    assert not list((cache / 'annotations').glob('*.job'))


def test_verification_reads_yes_and_no_not_a_bos(smol_tokenizer,
                                                 bos_tokenizer):
    """P(yes) compares the tokens of the words Yes and No: with a
    tokenizer that adds BOS (Llama's), the same ids as without."""
    class Sure(torch.nn.Module):
        """Puts all its mass on the first token of 'Yes'."""

        def __init__(self, tok):
            super().__init__()
            self.yes = tok.encode('Yes', add_special_tokens=False)[0]
            self.vocab = len(tok)
            self.device = torch.device('cpu')

        def forward(self, input_ids, **kwargs):
            logits = torch.zeros(1, 1, self.vocab)
            logits[..., self.yes] = 30.0
            return SimpleNamespace(logits=logits)

    for tok in (smol_tokenizer, bos_tokenizer):
        p = annotate.llm_yes_probability(Sure(tok), tok, 'Ada was born.',
                                         ['Ada'])
        assert p[0] > 0.99
