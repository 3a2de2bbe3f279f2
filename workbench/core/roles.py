"""One base model, many roles: named LoRA adapters on a single copy of the
weights.

Several papers need several models of the same architecture: the
leave-one-out ensemble's student, M teachers and the retrained oracle; KGA's
A_D, A_f, A_n, the unlearned A* and the retrained A_Dr. Here each is a LoRA
adapter on one frozen base (the pretrained model), so M + 2 models cost one
base in memory plus a few MB each, at 135M parameters and at 7B alike.

`Roles.fit(name, texts, epochs)` trains an adapter on texts (cached on disk
under a hash of everything it depends on), `copy` starts one adapter from
another's weights, and `active(name)` runs the model as one role. peft makes
only the active adapter trainable, so switching roles also switches which
weights an optimizer can move: compute frozen roles' outputs first, then
switch to the trainable role for its forward and backward pass.
"""
import json
import math
import time
import warnings
from contextlib import contextmanager

import torch
from safetensors.torch import load_file, save_file

from . import WorkbenchError, models
from .data import bucketed_batches, tokenize
from .fast.trunk import FrozenTrunk
from .cache import cached, key_of
from .profiles import get_profile
from .scoring import logprobs, memorization_accuracy, token_nll
from .train import TrainConfig, train

VERSION = 2  # bump when the training recipe of a role changes


def adapter_lr(profile):
    """Learning rate for training a LoRA adapter under `profile` (the
    profile's own when it trains LoRA, else the cpu profile's)."""
    return profile.implant_lr if profile.lora else 3e-3


class Roles:
    """A base causal LM with named LoRA adapters, one per role."""

    def __init__(self, profile='smoke', progress=True, base=None,
                 tokenizer=None):
        """Roles on the profile's model, or on `base` (a causal LM already
        in memory, with its `tokenizer`), which the roles then own."""
        self.profile = get_profile(profile)
        p = self.profile
        if base is None:
            base, tokenizer = models.load_causal_lm(p.model, p)
        self.tokenizer = tokenizer
        if p.gradient_checkpointing:
            models.checkpointing(base)
        self.base = base
        # every role is an adapter: the pretrained weights never train, and
        # with adapters on the top layers only, the layers below are run
        # once per text (`workbench.core.fast.trunk`)
        base.requires_grad_(False)
        n, top = base.config.num_hidden_layers, p.role_layers
        self.trunk = FrozenTrunk(base, n - top) if 0 < top < n else None
        # the base's linear layers by name, read before the first adapter
        # wraps them (every later adapter targets the same ones)
        head = base.get_output_embeddings()
        self.linear = sorted({name.rsplit('.', 1)[-1] for name, m in
                              base.named_modules()
                              if isinstance(m, torch.nn.Linear)
                              and m is not head})
        self.model = None  # the PeftModel, made with the first role
        self.progress = progress
        self.info = {}  # role -> how it was made
        self.keys = {}  # role -> cache key of its training

    @property
    def names(self):
        return [] if self.model is None else list(self.model.peft_config)

    def _config(self):
        # memory: peft loads SciPy; only where adapters are used
        from peft import LoraConfig
        r, top = self.profile.lora_r, self.profile.role_layers
        if not top:
            return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                              target_modules='all-linear',
                              task_type='CAUSAL_LM')
        n = self.base.config.num_hidden_layers
        return LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                          target_modules=self.linear,
                          layers_to_transform=list(range(max(0, n - top), n)),
                          task_type='CAUSAL_LM')

    def add(self, name, state=None):
        """A new adapter `name`: fresh (LoRA's B = 0, so it starts as the
        base model), or with the weights of `state`."""

        # memory: peft loads SciPy; only where adapters are used
        from peft import get_peft_model, set_peft_model_state_dict
        warnings.filterwarnings('ignore',
                                message='.*is_gradient_checkpointing')
        if name in self.names:
            raise WorkbenchError(f'role {name!r} exists already')
        if self.model is None:
            self.model = get_peft_model(self.base, self._config(),
                                        adapter_name=name)
        else:
            self.model.add_adapter(name, self._config())
        if state is not None:
            set_peft_model_state_dict(self.model, state, adapter_name=name)
        self.model.set_adapter(name)
        self.model.eval()
        return self.model

    def state(self, name):
        """A copy of the adapter weights of role `name`."""
        # memory: peft loads SciPy; only where adapters are used
        from peft import get_peft_model_state_dict
        self._check(name)
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(
            self.model, adapter_name=name).items()}

    def copy(self, src, dst):
        """A new role `dst` that starts as a copy of `src` (replacing any
        earlier `dst`); it is the active, trainable role afterwards."""
        state = self.state(src)
        if dst in self.names:
            self.drop(dst)
        self.add(dst, state)
        self.info[dst] = {'copy_of': src}
        return self.model

    def drop(self, name):
        """Delete role `name` (e.g. the teacher that saw a deleted text)."""
        self._check(name)
        if len(self.names) == 1:
            raise WorkbenchError('the last role cannot be dropped')
        active = self.model.active_adapter
        if active == name:  # the first other role becomes the active one
            active = next(n for n in self.names if n != name)
            self.model.set_adapter(active)
        self.model.delete_adapter(name)
        self.model.set_adapter(active)
        self.info.pop(name, None)
        self.keys.pop(name, None)

    def _check(self, name):
        if name not in self.names:
            raise WorkbenchError(f'no role {name!r}; the roles are '
                                 f'{", ".join(self.names) or "none yet"}')

    @contextmanager
    def active(self, name):
        """Run the model as role `name` (None: the bare base); the role that
        was active before is restored on exit."""
        if name is None:
            if self.model is None:
                yield self.base
                return
            with self.model.disable_adapter():
                yield self.model
            return
        self._check(name)
        before = self.model.active_adapter
        self.model.set_adapter(name)
        try:
            yield self.model
        finally:
            self.model.set_adapter(before)

    def key(self, texts, epochs, lr, seed, start=None):
        """Hash of everything a trained role depends on (with `start`,
        the key of the role it continued from)."""
        p = self.profile
        spec = {'version': VERSION, 'model': models.identity(p.model),
                **({'start': start} if start else {}),
                'texts': list(texts), 'epochs': epochs, 'lr': lr,
                'seed': seed, 'r': p.lora_r, 'layers': p.role_layers,
                'dtype': p.precision,
                'batch_size': p.batch_size}
        return key_of(spec)

    def fit(self, name, texts, epochs, lr=None, seed=0, desc=None,
            start=None):
        """Train role `name` on `texts` for `epochs` passes, or load it
        from the cache: a fresh adapter, or one that continues from the
        trained role `start`. Returns its info: MA reached on the texts,
        seconds spent, whether it came from the cache."""
        if not texts:
            raise WorkbenchError(f'role {name!r} needs at least one text')
        if start is not None and start not in self.keys:
            raise WorkbenchError(f'role {name!r} continues from {start!r}, '
                                 f'which was not trained by fit')
        lr = lr or adapter_lr(self.profile)
        key = self.key(texts, epochs, lr, seed,
                       start and self.keys[start])
        init = self.state(start) if start is not None else None
        if name in self.names:
            self.drop(name)
        self.keys[name] = key

        def load(folder):
            info = json.loads((folder / 'info.json').read_text())
            self.add(name, load_file(str(folder / 'adapter.safetensors')))
            return info

        def build(folder):
            if name in self.names:  # a cached adapter that failed to load
                self.drop(name)
            info = self._train(name, texts, epochs, lr, seed, desc, init)
            save_file({k: v.contiguous() for k, v in self.state(name).items()},
                      str(folder / 'adapter.safetensors'))
            (folder / 'info.json').write_text(json.dumps(info, indent=1))
            return info
        info, hit = cached('roles', key, build, load)
        self.info[name] = dict(info, cached=hit)
        return self.info[name]

    def _train(self, name, texts, epochs, lr, seed, desc, init):
        """Train role `name` (a fresh adapter, or `init`'s state) on
        `texts`; returns its info."""
        tokens = tokenize(self.tokenizer, texts)
        t0 = time.perf_counter()
        with torch.random.fork_rng():  # LoRA's A init from `seed` alone
            torch.manual_seed(seed)
            model = self.add(name, init)
        p = self.profile
        per_epoch = math.ceil(len(texts) / p.batch_size)
        gen = torch.Generator().manual_seed(seed)
        config = TrainConfig(lr=lr, optimizer='adamw', betas=(0.9, 0.999),
                             steps=epochs * per_epoch, eval_every=0,
                             seed=seed, desc=desc or f'training {name}',
                             progress=self.progress)
        result = train(model, token_nll,
                       bucketed_batches(tokens, p.batch_size, gen), config)
        if result.status != 'completed':
            self.drop(name)
            raise WorkbenchError(f'training role {name!r} ended early '
                                 f'({result.status}: {result.message})')
        ma = memorization_accuracy(model, tokens['input_ids'],
                                   tokens['attention_mask']).mean().item()
        return {'MA': ma, 'epochs': epochs, 'lr': lr, 'texts': len(texts),
                'seconds': time.perf_counter() - t0}

    def finetune(self, src, name, texts, steps, lr=None, seed=0):
        """A few plain fine-tuning updates (AdamW) of a copy of role `src`
        (None: a fresh adapter, the bare base model) on `texts`, as role
        `name`, not cached: the relearning probes. Returns the model."""
        if src is None:
            if name in self.names:
                self.drop(name)
            model = self.add(name)
        else:
            model = self.copy(src, name)
        p = self.profile
        config = TrainConfig(lr=lr or adapter_lr(p), optimizer='adamw',
                             betas=(0.9, 0.999), steps=steps, eval_every=0,
                             seed=seed, desc='relearning', progress=False)
        gen = torch.Generator().manual_seed(seed)
        train(model, token_nll, bucketed_batches(
            tokenize(self.tokenizer, texts), p.batch_size, gen), config)
        return model

    def logprobs(self, name, batch, rows=4, dtype=torch.float32):
        """`scoring.logprobs` of role `name` on a batch: log p(. | x_<t)
        at every position, (B, W-1, V), and the mask of real targets."""
        with self.active(name) as m:
            return logprobs(m, batch, rows, dtype)


