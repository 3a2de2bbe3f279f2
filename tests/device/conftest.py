"""The device suite's settings: a tiny randomly initialised model of
SmolLM2's architecture on every device present, in float32 and bfloat16,
with SmolLM2's tokenizer and with one that opens every text with a BOS
token (as Llama's and Mistral's do), and the frozen roles every method
leans on."""
import json
from types import SimpleNamespace

import pytest
import torch

from workbench.core import data
from workbench.core.paths import DATA_DIR
from workbench.core.profiles import get_profile
from workbench.core.roles import Roles

from conftest import tiny_llama

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
DTYPES = ['float32', 'bfloat16']
TOKENIZERS = ['smollm2', 'bos']
SETTINGS = [(d, t, k) for d in DEVICES for t in DTYPES for k in TOKENIZERS]
# the roles the methods lean on, each a LoRA adapter whose B is random (a
# trained role differs from the base)
HELPER_ROLES = ('original', 'teacher0', 'teacher1', 'A_f', 'A_n',
                'reinforced')


def tiny_model(vocab, device, dtype, seed=0):
    """Two layers of SmolLM2's architecture, randomly initialised, in
    `dtype` on `device`."""
    model = tiny_llama(vocab, seed, positions=1024)
    # a near-uniform output over 49,152 tokens has no spread float32 can
    # resolve (Min-K%++ divides by it): a larger output norm gives it one
    model.model.norm.weight.data.mul_(8)
    return model.to(device=device, dtype=getattr(torch, dtype)).eval()


def add_roles(roles, names):
    """Roles `names`, each a LoRA adapter whose B is random too (a trained
    role differs from the base), beside a fresh one, `base`."""
    roles.add('base')
    fresh = roles.state('base')
    for seed, name in enumerate(names):
        gen = torch.Generator().manual_seed(seed)
        roles.add(name, {k: (torch.randn(v.shape, generator=gen) * 0.05)
                         .to(v) if 'lora_B' in k else v
                         for k, v in fresh.items()})


def story():
    """Two short paragraphs of data/story and its anchored terms."""
    def rows(name):
        path = DATA_DIR / 'story' / f'{name}.jsonl'
        return [json.loads(line) for line in path.read_text().splitlines()
                if line.strip()]
    texts = [r['text'][:300] for r in rows('story')[:2]]
    return texts, rows('anchors')


@pytest.fixture(scope='module', params=SETTINGS,
                ids=['-'.join(s) for s in SETTINGS])
def setting(request, smol_tokenizer, bos_tokenizer):
    """One device, dtype and tokenizer: the roles on a tiny model, and the
    texts the methods and measurements read, tokenised."""
    device, dtype, kind = request.param
    tok = smol_tokenizer if kind == 'smollm2' else bos_tokenizer
    # adapters on the top layer only, as the profiles train roles (the
    # frozen layer below runs once per text)
    profile = get_profile('smoke', lora_r=4, role_layers=1)
    roles = Roles(profile, progress=False,
                  base=tiny_model(len(tok), device, dtype), tokenizer=tok)
    add_roles(roles, HELPER_ROLES)
    forget, retain, unseen = (data.people(split, 3) for split in
                              ('forget', 'retain', 'unseen'))
    pairs = lambda rows: [r['qa'][0] for r in rows]  # noqa: E731
    texts, anchors = story()
    return SimpleNamespace(
        device=torch.device(device), dtype=getattr(torch, dtype), kind=kind,
        tok=tok, roles=roles, people=forget, anchors=anchors,
        story=texts, forget_pairs=pairs(forget), retain_pairs=pairs(retain),
        qa={split: data.qa_batch(tok, [p['question'] for p in pairs(rows)],
                                 [p['answer'] for p in pairs(rows)],
                                 eos=True)
            for split, rows in (('forget', forget), ('retain', retain))},
        texts={split: data.tokenize(tok, [r['text'] for r in rows])
               for split, rows in (('forget', forget), ('retain', retain),
                                   ('unseen', unseen))})
