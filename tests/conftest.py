"""Shared test fixtures: hand-built models with known answers, and a tiny
randomly initialised model of SmolLM2's architecture."""
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch


class SuccessorLM(torch.nn.Module):
    """Predicts token k+1 after token k, with near certainty.

    A sequence 0, 1, 2, ... is therefore perfectly memorised (MA = EL = 1),
    and any other sequence scores exactly what can be worked out by hand.
    """

    def __init__(self, vocab=50, sharpness=20.0):
        super().__init__()
        self.vocab, self.sharpness = vocab, sharpness
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(pad_token_id=0)

    def forward(self, input_ids, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False, **kwargs):
        nxt = (input_ids + 1) % self.vocab
        logits = torch.nn.functional.one_hot(nxt, self.vocab).float()
        return SimpleNamespace(logits=logits * self.sharpness + self.dummy,
                               past_key_values=None)


class UniformLM(SuccessorLM):
    """Every token equally likely: perplexity equals the vocabulary size."""

    def forward(self, input_ids, **kwargs):
        logits = torch.zeros(*input_ids.shape, self.vocab) + self.dummy
        return SimpleNamespace(logits=logits, past_key_values=None)


def tiny_llama(vocab=64, seed=0, positions=256):
    """A randomly initialised two-layer model of SmolLM2's architecture."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=32,
                         intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=positions,
                         tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def random_tokens(n=6, T=8, vocab=64, seed=0):
    """`n` random token sequences of length `T`, unpadded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, T), generator=g)
    return {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}


def ragged_tokens(n=6, T=10, seed=0):
    """Right-padded texts of different lengths, the last one short."""
    data = random_tokens(n=n, T=T, seed=seed)
    lengths = torch.tensor([T - (3 * i) % 5 for i in range(n)])
    lengths[-1] = 3
    mask = (torch.arange(T)[None] < lengths[:, None]).long()
    return {'input_ids': data['input_ids'] * mask, 'attention_mask': mask}


def step_gradient(model, loss_fn, batches, accum):
    """The gradient of one step of the training loop over `batches`."""
    from workbench.core.train import accumulate
    model.zero_grad()
    accumulate(model, [loss_fn], iter(batches), accum)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def random_logprobs(*shape, seed=0):
    """Log-probabilities of a peaked random distribution of `shape`."""
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(*shape, generator=g) * 3, -1)


@pytest.fixture
def successor():
    return SuccessorLM()


@pytest.fixture
def tiny():
    return tiny_llama()


@pytest.fixture(scope='session')
def smol_tokenizer():
    """SmolLM2's tokenizer: from its offline copy, or from the folder
    WORKBENCH_SMOLLM2_TOKENIZER names (where the copy is not installed:
    the GPU check sets it)."""
    from workbench.core.models import load_tokenizer
    return load_tokenizer(os.environ.get('WORKBENCH_SMOLLM2_TOKENIZER')
                          or 'smollm2-135m')


@pytest.fixture(scope='session')
def bos_tokenizer(smol_tokenizer):
    """SmolLM2's tokenizer made to open every text with a BOS token, as
    Llama's and Mistral's do (SmolLM2's adds none)."""
    import copy
    from tokenizers.processors import TemplateProcessing
    tok = copy.deepcopy(smol_tokenizer)
    bos = tok.bos_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f'{bos} $A', pair=f'{bos} $A {bos} $B',
        special_tokens=[(bos, tok.bos_token_id)])
    assert tok('Paris')['input_ids'][0] == tok.bos_token_id
    return tok


@pytest.fixture
def tiny_model_dir(tmp_path, smol_tokenizer):
    """A local folder holding a tiny model with SmolLM2's tokenizer."""
    model = tiny_llama(vocab=len(smol_tokenizer))
    model.save_pretrained(tmp_path / 'tiny')
    smol_tokenizer.save_pretrained(tmp_path / 'tiny')
    return str(tmp_path / 'tiny')


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty workbench cache for this test."""
    monkeypatch.setenv('WORKBENCH_CACHE', str(tmp_path / 'cache'))
    return tmp_path / 'cache'


@pytest.fixture
def smoke_record(tmp_path, monkeypatch):
    """Run a notebook headless on the smoke profile; return its record.

    The kernel's glibc keeps freed memory instead of returning every
    tensor to the kernel (docs/performance.md, "The heap"): the tests
    check effects, not memory, and run about a fifth faster."""
    import json

    from workbench.cli import run_notebook
    monkeypatch.setenv('WORKBENCH_MMAP_THRESHOLD', str(32 << 20))
    monkeypatch.setenv('WORKBENCH_TRIM_THRESHOLD', str(1 << 30))

    def run(name, parameters=None):
        path = run_notebook(name, 'smoke', tmp_path, parameters,
                            progress=False)
        keep = os.environ.get('WORKBENCH_KEEP_RECORDS')
        if keep:  # to compare one version's numbers with another's
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        return json.loads(path.read_text())
    return run


@pytest.fixture(scope='module')
def roles():
    """The smoke profile's roles on the offline SmolLM2 (no role trained)."""
    from workbench.core.roles import Roles
    return Roles('smoke', progress=False)
