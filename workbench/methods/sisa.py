"""SISA: Sharded, Isolated, Sliced, Aggregated training (exact unlearning).

Bourtoule et al., "Machine Unlearning", IEEE S&P 2021,
https://arxiv.org/abs/1912.03817

The training set is split into S disjoint shards and each shard into R
slices. Shard k's model trains on slice 1, then slices 1-2, ..., saving a
checkpoint C_{k,r} after slice r; predictions are a majority vote of the S
models. Deleting a point z of slice r of shard k reloads C_{k,r-1} and
retrains slices r..R without z: the other shards never saw z, so the result
is exactly the ensemble trained from scratch without it, at a fraction of
the cost.

Two learners carry the shard models:
- `HeadLearner` (fast): a logistic-regression head on frozen, cached
  sentence embeddings of the encoder.
- `FinetuneLearner` (real): the encoder fine-tuned with LoRA and a linear
  head; one backbone in memory, each shard's adapter and head a small
  state dict swapped in (at 7B, S adapters on one base).
"""
import copy
import hashlib
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from ..core import WorkbenchError
from ..core.embed import mean_pool, sentence_embeddings
from ..core.models import load_trainable_state, trainable_state
from ..core.models import checkpointing, disable_dropout, load_encoder, resolve
from ..core.cache import cached, key_of
from .fairsisa import majority_vote


@dataclass
class SISAConfig:
    """Shards, slices and the training of each shard model."""
    shards: int = field(default=4, metadata={
        'min': 1, 'max': 16, 'help': 'S: disjoint shards, one model each'})
    slices: int = field(default=2, metadata={
        'min': 1, 'max': 8, 'help': 'R: slices per shard, a checkpoint '
                                    'after each'})
    epochs: int = field(default=8, metadata={
        'min': 1, 'max': 40, 'help': 'e: epochs over a shard (SISA spreads '
                                     'them over the slices)'})
    lr: float = field(default=1e-2, metadata={
        'min': 1e-5, 'max': 1e-1, 'log': True, 'help': 'AdamW learning rate'})
    batch_size: int = field(default=32, metadata={
        'min': 1, 'max': 256, 'help': 'examples per step'})
    weight_decay: float = field(default=0.0, metadata={
        'min': 0.0, 'max': 0.1, 'help': 'AdamW weight decay'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'shard assignment and training order'})

    def __post_init__(self):
        if self.shards < 1 or self.slices < 1 or self.batch_size < 1:
            raise WorkbenchError(f'SISA needs shards, slices and batch_size '
                                 f'>= 1, got {self}')
        if not self.lr > 0:
            raise WorkbenchError(f'lr must be > 0, got {self.lr}')
        if 2 * self.epochs < self.slices + 1:
            raise WorkbenchError(
                f'with {self.slices} slices, epochs must be at least '
                f'{math.ceil((self.slices + 1) / 2)} so that every slice is '
                f'trained on (got {self.epochs})')


def slice_epochs(epochs, slices):
    """SISA's schedule: slice r trains floor(r e') - floor((r-1) e') epochs,
    e' = 2e / (R + 1), on slices 1..r; the total work then matches e epochs
    over the shard. Returns one count per slice."""
    ebar = 2 * epochs / (slices + 1)
    return [math.floor(r * ebar + 1e-9) - math.floor((r - 1) * ebar + 1e-9)
            for r in range(1, slices + 1)]


def partition(positions, shards, slices, seed=0):
    """Random, uniform shards and slices: parts[k][r] is a list of positions."""
    positions = np.asarray(positions)
    if len(positions) < shards * slices:
        raise WorkbenchError(f'{len(positions)} training examples cannot '
                             f'fill {shards} shards x {slices} slices')
    order = np.random.default_rng(seed).permutation(positions)
    parts = []
    for k in range(shards):
        shard = order[k::shards]
        parts.append([list(map(int, s)) for s in np.array_split(shard, slices)])
    return parts


def _zero_init(module):
    """Logistic regression starts at zero: no seed dependence."""
    for p in module.parameters():
        torch.nn.init.zeros_(p)


class HeadLearner:
    """Fast mode: logistic regression on frozen sentence embeddings."""

    def __init__(self, features, labels):
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.module = torch.nn.Linear(self.features.shape[1], 2)

    def init_state(self, seed):
        _zero_init(self.module)
        return self.state()

    def state(self):
        return {k: v.detach().clone()
                for k, v in self.module.state_dict().items()}

    def load(self, state):
        self.module.load_state_dict(state)
        return self.module

    def logits(self, idx):
        return self.module(self.features[idx])


class PooledClassifier(torch.nn.Module):
    """A backbone's hidden states, pooled, through a linear head.

    Encoders pool by the mean over tokens (as sentence-transformers does for
    MiniLM); causal LMs by the last real token, which alone saw the whole
    text.
    """

    def __init__(self, backbone, pooling='mean', labels=2):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.head = torch.nn.Linear(backbone.config.hidden_size, labels)

    def pooled(self, input_ids, attention_mask):
        out = self.backbone(input_ids=input_ids,
                            attention_mask=attention_mask)
        h = out.last_hidden_state if hasattr(out, 'last_hidden_state') \
            else out.hidden_states[-1]
        if self.pooling == 'mean':
            return mean_pool(h, attention_mask)
        last = attention_mask.sum(1) - 1  # right padding
        return h[torch.arange(len(h)), last]

    def forward(self, input_ids, attention_mask):
        return self.head(self.pooled(input_ids, attention_mask).float())


def default_pooling(config):
    """'last' for causal LMs (by their architectures), else 'mean'."""
    archs = getattr(config, 'architectures', None) or []
    return 'last' if any('CausalLM' in a for a in archs) else 'mean'


def with_lora_head(backbone, lora_r=8, pooling=None):
    """LoRA adapters on every linear layer of `backbone`, a linear head."""

    # memory: peft loads SciPy; only where adapters are used
    from peft import LoraConfig, get_peft_model
    # peft still calls a transformers property that now warns on every use
    warnings.filterwarnings('ignore', message='.*is_gradient_checkpointing')
    pooling = pooling or default_pooling(backbone.config)
    backbone = get_peft_model(backbone, LoraConfig(
        r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0,
        target_modules='all-linear'))
    model = PooledClassifier(backbone, pooling)
    model.head.to(device=next(backbone.parameters()).device,
                  dtype=torch.float32)
    return model


def load_classifier(name, lora_r=8, dtype=torch.float32,
                    gradient_checkpointing=False):
    """A `PooledClassifier` on `name`, LoRA on every linear layer."""

    info = resolve(name)
    backbone = AutoModel.from_pretrained(info.path, use_safetensors=True,
                                         dtype=dtype)
    disable_dropout(backbone)
    if gradient_checkpointing:
        checkpointing(backbone)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = 'right'
    return with_lora_head(backbone, lora_r), tokenizer


class FinetuneLearner:
    """Real mode: LoRA fine-tuning of the backbone, one adapter per shard.

    The backbone stays in memory once; a shard's model is its LoRA weights
    and head (`state`), loaded before it trains or predicts.
    """

    def __init__(self, model, tokenizer, texts, labels, max_length=128):
        self.model, self.tokenizer = model, tokenizer
        self.texts = list(texts)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.max_length = max_length

    def init_state(self, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                for name, p in self.model.named_parameters():
                    if not p.requires_grad:
                        continue
                    if 'lora_B' in name or name.endswith('head.bias'):
                        p.zero_()
                    elif 'lora_A' in name:
                        torch.nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                    else:  # the head's weight
                        torch.nn.init.normal_(p, std=0.02)
        return self.state()

    def state(self):
        return trainable_state(self.model)

    def load(self, state):
        load_trainable_state(self.model, state)
        return self.model

    def logits(self, idx):
        device = next(self.model.parameters()).device
        enc = self.tokenizer([self.texts[i] for i in idx.tolist()],
                             return_tensors='pt', padding=True,
                             truncation=True, max_length=self.max_length)
        return self.model(enc['input_ids'].to(device),
                          enc['attention_mask'].to(device))


def train_slice(learner, state, positions, epochs, config, seed):
    """Train one shard model from `state` for `epochs` over `positions`.

    A fresh optimiser and a generator seeded by (seed, shard, slice) make the
    run a function of its inputs alone, which is what makes deletion exact.
    """
    module = learner.load(state)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr,
                            weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    positions = torch.as_tensor(positions, dtype=torch.long)
    device = params[0].device
    for _ in range(epochs):
        order = positions[torch.randperm(len(positions), generator=gen)]
        for batch in order.split(config.batch_size):
            loss = F.cross_entropy(learner.logits(batch),
                                   learner.labels[batch].to(device))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    module.eval()
    return learner.state()


@dataclass
class Deletion:
    """What one deletion request cost."""
    positions: list
    shards: dict  # shard -> first slice retrained (1-based)
    work: int  # example-passes retrained
    full_work: int  # example-passes of a retrain from scratch
    seconds: float

    @property
    def retrain_fraction(self):
        return self.work / self.full_work


class SISA:
    """S shard models with slice checkpoints, a vote, and exact deletion."""

    def __init__(self, learner, positions, config=None, parts=None):
        self.learner = learner
        self.config = config or SISAConfig()
        c = self.config
        self.parts = copy.deepcopy(parts) if parts is not None else \
            partition(positions, c.shards, c.slices, c.seed)
        if len(self.parts) != c.shards or any(
                len(p) != c.slices for p in self.parts):
            raise WorkbenchError('the partition does not match the config')
        self.epochs = slice_epochs(c.epochs, c.slices)
        # checkpoints[k][r]: shard k after slice r (r = 0: initial weights)
        self.checkpoints = [[None] * (c.slices + 1) for _ in range(c.shards)]
        self.deleted = []
        self.seconds = 0.0
        self._cache = {}  # (shard, positions) -> probabilities

    def _seed(self, k, r):
        return self.config.seed * 1_000_003 + k * 1009 + r

    def work(self, k, start=1):
        """Example-passes to train shard k from slice `start` on."""
        total, seen = 0, sum(len(s) for s in self.parts[k][:start - 1])
        for r in range(start, self.config.slices + 1):
            seen += len(self.parts[k][r - 1])
            total += seen * self.epochs[r - 1]
        return total

    def full_work(self):
        return sum(self.work(k) for k in range(self.config.shards))

    def train_shard(self, k, start=1, callback=None):
        """Train shard k from checkpoint C_{k,start-1} through slice R."""
        self._cache = {key: v for key, v in self._cache.items()
                       if key[0] != k}
        if start == 1:
            self.checkpoints[k][0] = self.learner.init_state(self._seed(k, 0))
        state = self.checkpoints[k][start - 1]
        for r in range(start, self.config.slices + 1):
            seen = [i for s in self.parts[k][:r] for i in s]
            if seen:
                state = train_slice(self.learner, state, seen,
                                    self.epochs[r - 1], self.config,
                                    self._seed(k, r))
            self.checkpoints[k][r] = state
            if callback is not None:
                callback(shard=k, slice=r)

    def fit(self, callback=None, progress=True):
        """Train every shard from scratch; `callback(shard=, slice=)`."""
        start = time.perf_counter()
        for k in tqdm(range(self.config.shards), desc='SISA shards',
                      disable=not progress):
            self.train_shard(k, callback=callback)
        self.seconds = time.perf_counter() - start
        return self

    def locate(self, position):
        """(shard, slice) holding a training position (slice 1-based)."""
        for k, shard in enumerate(self.parts):
            for r, s in enumerate(shard, 1):
                if position in s:
                    return k, r
        raise WorkbenchError(f'example {position} is not in the training '
                             f'set (deleted already?)')

    def delete(self, positions):
        """Unlearn training examples exactly: retrain only their shards,
        from the checkpoint before the first slice that held one."""
        positions = list(dict.fromkeys(int(p) for p in
                                       np.atleast_1d(positions)))
        if not positions:
            raise WorkbenchError('nothing to delete')
        self._check_trained()
        # every check before anything changes: a bad request loses nothing
        where = {p: self.locate(p) for p in positions}
        starts, removed = {}, {}
        for k, r in where.values():
            starts[k] = min(starts.get(k, r), r)
            removed[k] = removed.get(k, 0) + 1
        for k, n in removed.items():
            if n >= sum(len(s) for s in self.parts[k]):
                raise WorkbenchError(f'deleting these would empty shard {k}')
        for p, (k, r) in where.items():
            self.parts[k][r - 1].remove(p)
        begin = time.perf_counter()
        work = sum(self.work(k, r) for k, r in starts.items())
        for k, r in sorted(starts.items()):
            self.train_shard(k, start=r)
        self.deleted.extend(positions)
        return Deletion(positions=positions, shards=starts, work=work,
                        full_work=self.full_work(),
                        seconds=time.perf_counter() - begin)

    def without(self, positions):
        """An untrained SISA with the same partition minus `positions`:
        retrained from scratch it is what deletion must equal."""
        drop = set(int(p) for p in positions)
        parts = [[[i for i in s if i not in drop] for s in shard]
                 for shard in self.parts]
        return SISA(self.learner, None, self.config, parts=parts)

    def _check_trained(self):
        if any(c[-1] is None for c in self.checkpoints):
            raise WorkbenchError('train the shards first (fit)')

    def final_states(self):
        return [c[-1] for c in self.checkpoints]

    @torch.no_grad()
    def shard_probas(self, k, positions, batch_size=256):
        """P(y = 1) of shard k's model (cached until the shard retrains)."""
        positions = torch.as_tensor(np.asarray(positions), dtype=torch.long)
        key = (k, hashlib.sha1(positions.numpy().tobytes()).hexdigest())
        if key not in self._cache:
            self.learner.load(self.checkpoints[k][-1])
            p = [torch.softmax(self.learner.logits(b).float(), -1)[:, 1]
                 for b in positions.split(batch_size)]
            self._cache[key] = torch.cat(p).cpu().numpy()
        return self._cache[key]

    def probas(self, positions):
        """P(y = 1) of every shard model: an (n, S) array."""
        self._check_trained()
        return np.stack([self.shard_probas(k, positions)
                         for k in range(self.config.shards)], 1)

    def votes(self, positions):
        """Each shard's label: an (n, S) array of 0/1."""
        return (self.probas(positions) > 0.5).astype(int)

    def predict(self, positions, aggregation='vote'):
        """The ensemble's label: majority vote, or the mean probability."""
        if aggregation == 'vote':
            return majority_vote(self.votes(positions))
        if aggregation == 'mean':
            return (self.probas(positions).mean(1) > 0.5).astype(int)
        raise WorkbenchError(f"aggregation must be 'vote' or 'mean', got "
                             f"{aggregation!r}")


def same_models(a, b):
    """True when two SISA ensembles hold identical shard weights."""
    return all(torch.equal(x[n], y[n])
               for x, y in zip(a.final_states(), b.final_states())
               for n in x)


def embed(texts, name='minilm', batch_size=64, progress=True):
    """Mean-pooled, normalised sentence embeddings of the frozen encoder,
    cached on disk (keyed by the model name and the texts)."""
    texts = list(texts)

    def build(folder):
        encoder, tok = load_encoder(name)
        features = sentence_embeddings(encoder, tok, texts, batch_size,
                                       progress)
        torch.save(features, folder / 'embeddings.pt')
        return features

    def load(folder):
        features = torch.load(folder / 'embeddings.pt', weights_only=True)
        if features.shape[0] != len(texts):
            raise ValueError(f'{features.shape[0]} rows for {len(texts)} '
                             f'texts')
        return features
    return cached('embeddings', key_of(name, texts), build, load)[0]
