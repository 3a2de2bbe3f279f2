"""Named run profiles: what scales every notebook.

A profile holds what every notebook shares (the model, the dtype, the
device, the people per split); each experiment keeps one sizes table of its
own beside its set-up, keyed by the same profile names and read through
`sizes`, so an unknown profile is the same one error everywhere.

`smoke` is for CI (seconds to minutes, still shows each effect), `cpu` is the
real lesson on a laptop (under 2 GB), `gpu` a 1-2B model on a Colab-size GPU,
`7b` a 7B model on one large GPU with LoRA and gradient checkpointing; both
GPU profiles take their precision from the card (`hardware_dtype`).
"""
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from . import WorkbenchError


@dataclass(frozen=True)
class Profile:
    """Everything that changes with the size of the run."""
    name: str
    model: str  # a name `workbench.core.models.resolve` understands
    encoder: str  # the classifier backbone
    # 'float32', 'bfloat16', 'float16', or 'auto': chosen from the GPU at
    # hand (`precision`)
    dtype: str
    device: str  # 'cpu', 'cuda' or 'auto'
    lora: bool  # train LoRA adapters instead of all weights
    lora_r: int
    # layers' activations computed again in the backward pass: the same
    # numbers in less memory, for one more forward pass per step
    gradient_checkpointing: bool
    n_forget: int  # people in the forget set
    n_retain: int  # people in the retain set
    n_unseen: int  # never-trained people, for the forgetting thresholds
    n_world: int  # world_facts questions for utility (all 120: the paired
    # difference of their mean probability resolves about 0.03)
    batch_size: int
    micro_batch: int  # sequences per forward pass of full-batch unlearning
    # (gradient ascent, SeUL: gradients accumulate to the whole forget set);
    # on a CPU 2, with freed memory reused, is faster than 4 and no larger
    implant_lr: float
    implant_epochs: int  # upper bound; stops early at `implant_target_ma`
    implant_target_ma: float
    unlearn_steps: int  # most steps; Jang et al.'s max_epochs is 20
    unlearn_lr: float  # LoRA needs a larger step than full fine-tuning
    el_n: int  # n of EL_n
    el_stride: int  # 1 is the paper's exact EL_n
    max_tokens: int = 512  # longest text accepted
    # adapters of `workbench.core.roles` on the top n layers only (0: every
    # layer); backpropagating through fewer layers halves the cost of
    # training many models on a CPU
    role_layers: int = 0
    min_gpu_gb: float = 0.0  # GiB of GPU memory the profile needs

    @property
    def precision(self):
        """The dtype the model runs in here: the profile's own, or for
        'auto' the one this machine computes natively (`hardware_dtype`)."""
        if self.dtype != 'auto':
            return self.dtype
        return hardware_dtype(self.device, self.lora)

    def as_dict(self):
        """Plain dict, for the results record (with the dtype used)."""
        return dict(asdict(self), dtype=self.precision)


def hardware_dtype(device, lora):
    """The weights' dtype for `device`: float32 on a CPU, and on a GPU
    - bfloat16 where it computes bfloat16 natively (compute capability 8.0
      and up: A100, L4, H100);
    - else float16 for a frozen base under LoRA, whose adapters peft
      keeps in float32 (a T4 or V100 only emulates bfloat16, slowly);
    - float32 for full-weight training on any GPU: Adam's updates under
      half a bfloat16 step (0.2-0.4 % of the weight) would be rounded
      away.
    """
    if device == 'cpu':
        return 'float32'
    if not lora:
        return 'float32'
    if not torch.cuda.is_available() or \
            torch.cuda.get_device_capability() >= (8, 0):
        return 'bfloat16'
    return 'float16'


PROFILES = {
    'smoke': Profile(
        name='smoke', model='smollm2-135m', encoder='minilm',
        dtype='float32', device='cpu', lora=False, lora_r=16,
        gradient_checkpointing=False, n_forget=4, n_retain=4, n_unseen=8,
        n_world=120, batch_size=4, micro_batch=4, implant_lr=3e-4,
        implant_epochs=12, implant_target_ma=0.9, unlearn_steps=20,
        unlearn_lr=5e-5, el_n=10, el_stride=10, max_tokens=256,
        role_layers=10),
    'cpu': Profile(
        name='cpu', model='smollm2-135m', encoder='minilm', dtype='float32',
        device='cpu', lora=True, lora_r=16, gradient_checkpointing=True,
        n_forget=8, n_retain=8, n_unseen=10, n_world=120, batch_size=4,
        micro_batch=2, implant_lr=3e-3, implant_epochs=20,
        implant_target_ma=0.9, unlearn_steps=20, unlearn_lr=1e-3, el_n=10,
        el_stride=10, role_layers=10),
    'gpu': Profile(
        name='gpu', model='HuggingFaceTB/SmolLM2-1.7B-Instruct',
        encoder='FacebookAI/roberta-base', dtype='auto', device='cuda',
        lora=True, lora_r=16, gradient_checkpointing=False, n_forget=10,
        n_retain=30, n_unseen=20, n_world=120, batch_size=8, micro_batch=8,
        implant_lr=1e-3, implant_epochs=20, implant_target_ma=0.95,
        unlearn_steps=20, unlearn_lr=5e-4, el_n=10, el_stride=1,
        max_tokens=1024, min_gpu_gb=12),
    # 7B with LoRA r=16, bf16 and gradient checkpointing: gradient ascent
    # plus a KL to the reference peaked at 15.8 GB (bench/gpu_7b.py, H100)
    '7b': Profile(
        name='7b', model='mistralai/Mistral-7B-v0.1',
        encoder='FacebookAI/roberta-large', dtype='auto', device='cuda',
        lora=True, lora_r=16, gradient_checkpointing=True, n_forget=10,
        n_retain=30, n_unseen=20, n_world=120, batch_size=8, micro_batch=8,
        implant_lr=5e-4, implant_epochs=20, implant_target_ma=0.95,
        unlearn_steps=20, unlearn_lr=2e-4, el_n=10, el_stride=1,
        max_tokens=2048, min_gpu_gb=22),
}


def get_profile(name, **overrides):
    """The named profile, with any fields replaced by `overrides`.

    An empty `name` is this machine's default: $WORKBENCH_PROFILE where
    it is set, else `cpu`.
    `name` may also be a JSON file of a profile of one's own: the profile
    it starts from (`"base"`, whose sizes every notebook then takes) and
    the fields it replaces, e.g. `{"base": "cpu", "model": "my/folder",
    "device": "cuda", "dtype": "auto"}`."""
    if name in ('', None):  # this machine's: $WORKBENCH_PROFILE, else cpu
        name = os.environ.get('WORKBENCH_PROFILE') or 'cpu'
    if isinstance(name, Profile):
        profile = name
    elif name in PROFILES:
        profile = PROFILES[name]
    elif str(name).endswith('.json') and Path(name).is_file():
        return from_file(name, **overrides)
    else:
        raise WorkbenchError(f'unknown profile {name!r}; choose one of '
                             f'{", ".join(PROFILES)}, or a .json file of '
                             f'one')
    unknown = set(overrides) - set(Profile.__dataclass_fields__)
    if unknown:
        raise WorkbenchError(f'unknown profile field(s): {sorted(unknown)}')
    return replace(profile, **overrides)


def from_file(path, **overrides):
    """A profile from a JSON file (see `get_profile`)."""
    try:
        fields_ = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WorkbenchError(f'profile file {path}: not readable JSON '
                             f'({e})') from None
    if not isinstance(fields_, dict):
        raise WorkbenchError(f'profile file {path}: not a JSON object')
    base = fields_.pop('base', None)
    if base not in PROFILES:
        raise WorkbenchError(f'profile file {path}: "base" must name the '
                             f'profile it starts from, one of '
                             f'{", ".join(PROFILES)}')
    if 'name' in fields_:
        raise WorkbenchError(f'profile file {path}: the name is its base\'s '
                             f'(the notebooks size themselves by it)')
    return get_profile(base, **{**fields_, **overrides})


def profile_arg(text):
    """`text` if it names a profile or a profile file, else ValueError
    (for the command line's `--profile`)."""
    if text in PROFILES or (text.endswith('.json') and Path(text).is_file()):
        return text
    raise ValueError(f'{text!r} is not a profile ({", ".join(PROFILES)}) '
                     f'or a .json file of one')


def sizes(table, profile, **overrides):
    """The row of an experiment's sizes `table` (profile name -> dict) for
    `profile` (a name or a Profile), with `overrides` replacing its
    entries."""
    name = profile.name if isinstance(profile, Profile) else profile
    if name not in table:
        raise WorkbenchError(f'unknown profile {name!r}; choose one of '
                             f'{", ".join(table)}')
    unknown = set(overrides) - set(table[name])
    if unknown:
        raise WorkbenchError(f'unknown size(s) {sorted(unknown)}; the sizes '
                             f'are {", ".join(table[name])}')
    return dict(table[name], **overrides)
