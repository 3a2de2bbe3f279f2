"""RMU: representation misdirection for unlearning.

Li, Pan, Gopal, Yue, Berrios, Gatti, Li, Dombrowski, Goel, Phan et al.,
"The WMDP Benchmark: Measuring and Reducing Malicious Use With
Unlearning", ICML 2024, https://arxiv.org/abs/2403.03218

The other methods of the workbench act on the output distribution. RMU
acts on the model's representations: at one middle layer l, it steers the
hidden states of the forget tokens towards a fixed random direction u
(uniform in [0, 1)^d, scaled to norm c), so the layers above receive noise
where the forget set's knowledge was, and it holds the hidden states of
the retain tokens where the original model put them:

    L_forget = E_forget[ || h_theta^l(x_t) - c u / ||u|| ||^2 / d ]
    L_retain = E_retain[ || h_theta^l(x_t) - h_original^l(x_t) ||^2 / d ]
    L = gamma L_forget + alpha L_retain

averaged over each row's target tokens (the answers of Q&A pairs), then
over rows, as OpenUnlearning's RMU computes them. The layer is given by
its relative depth among the layers the training can change: the paper's
layer 7 of 32 by default (LoRA roles adapt the top layers only, so there
it counts from the lowest adapted layer).
"""
from dataclasses import dataclass, field, replace

import torch

from ..core import WorkbenchError
from .graddiff import GradDiffConfig, paired_plan

NAME = 'rmu'
TITLE = 'steer a middle layer on the forget set to noise (Li et al., WMDP)'
ORDER = 48
NEEDS = ('retain',)
HELPERS = ()


@dataclass
class RMUConfig(GradDiffConfig):
    """Hyperparameters: OpenUnlearning's TOFU defaults (steering
    coefficient 2, both weights 1); the paper tunes c per model."""
    forget_weight: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'gamma: weight of steering the '
                                        'forget states'})
    retain_weight: float = field(default=1.0, metadata={
        'min': 0.0, 'max': 5.0, 'help': 'alpha: weight of holding the '
                                        'retain states'})
    steering: float = field(default=2.0, metadata={
        'min': 0.1, 'max': 100.0, 'log': True,
        'help': 'c: norm of the random direction the forget states go to'})
    depth: float = field(default=7 / 32, metadata={
        'min': 0.0, 'max': 1.0, 'help': 'relative depth of the steered '
                                        'layer among the trainable ones'})

    def __post_init__(self):
        super().__post_init__()
        if not self.steering > 0 or not 0 <= self.depth <= 1:
            raise WorkbenchError(f'RMU needs steering > 0 and depth in '
                                 f'[0, 1], got steering {self.steering}, '
                                 f'depth {self.depth}')


Config = RMUConfig


def decoder_layers(model):
    """The decoder layers of a causal LM (or of a PeftModel of one)."""
    base = model.get_base_model() if hasattr(model, 'get_base_model') \
        else model
    return base.get_decoder().layers


def steered_layer(model, depth=7 / 32):
    """The index of the decoder layer RMU steers: the one at relative
    `depth` of the layers the training can change (7/32: the paper's
    layer 7 of 32 in a fully trained model; with LoRA roles on the top
    layers only, a layer below them could not move)."""
    layers = decoder_layers(model)
    trainable = [i for i, block in enumerate(layers)
                 if any(p.requires_grad for p in block.parameters())]
    if not trainable:
        raise WorkbenchError('RMU needs trainable weights in a decoder '
                             'layer; this model has none')
    first = trainable[0]
    return min(len(layers) - 1, first + round((len(layers) - first) * depth))


def activations(model, batch, layer):
    """Outputs of decoder layer `layer` at every position, (B, T, d), read
    by a forward hook (the model's own `hidden_states` put the final norm
    on the last layer's)."""
    device = next(model.parameters()).device
    seen = []

    def keep(module, inputs, output):
        seen.append(output[0] if isinstance(output, tuple) else output)
    hook = decoder_layers(model)[layer].register_forward_hook(keep)
    try:
        model(input_ids=batch['input_ids'].to(device),
              attention_mask=batch['attention_mask'].to(device))
    finally:
        hook.remove()
    return seen[0]


def token_mask(batch):
    """The tokens RMU reads: the targets (answers) where the batch marks
    them, else every real token."""
    mask = batch['attention_mask']
    if 'target_mask' in batch:
        mask = mask * batch['target_mask']
    return mask


def activation_loss(h, target, mask):
    """Mean over a row's masked tokens of the mean squared difference over
    the d dimensions, averaged over rows (OpenUnlearning's)."""
    mask = mask.to(h.device, h.dtype)
    sq = (h.float() - target.float()) ** 2
    per_row = (sq.mean(-1) * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_row.mean()


def control_vector(dim, steering, seed):
    """c u / ||u||, u uniform in [0, 1)^d: the same for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(dim, generator=gen)
    return u / u.norm() * steering


def rmu_loss(model, batch, layer, control, forget_weight=1.0,
             retain_weight=1.0):
    """gamma L_forget + alpha L_retain; the retain rows carry the original
    model's activations (`reference_activation`)."""
    f, r = batch['forget'], batch['retain']
    h_f = activations(model, f, layer)
    # L_forget: the forget states towards the random direction
    forget = activation_loss(h_f, control.to(h_f.device), token_mask(f))
    h_r = activations(model, r, layer)
    # L_retain: the retain states where the original puts them
    retain = activation_loss(h_r, r['reference_activation'].to(h_r.device),
                             token_mask(r))
    loss = forget_weight * forget + retain_weight * retain
    return loss, {'forget_mse': forget.item(), 'retain_mse': retain.item()}


@torch.no_grad()
def reference_activations(ref, tokens, layer, micro_batch):
    """The original model's layer outputs of every row, kept on the CPU."""
    parts = []
    for i in range(0, tokens['input_ids'].shape[0], micro_batch):
        chunk = {k: v[i:i + micro_batch] for k, v in tokens.items()}
        parts.append(activations(ref, chunk, layer).cpu())
    return torch.cat(parts)


def plan(task, model, config):
    """RMU in GradDiff's steps; the original's retain activations are taken
    once, before the first update."""
    layer = steered_layer(model, config.depth)
    with task.original_model(model) as ref:
        kept = reference_activations(ref, task.retain, layer,
                                     config.micro_batch)
    retain = dict(task.retain, reference_activation=kept)
    control = control_vector(kept.shape[-1], config.steering, config.seed)

    def loss_fn(m, batch):
        return rmu_loss(m, batch, layer, control, config.forget_weight,
                        config.retain_weight)
    result = paired_plan(replace(task, retain=retain), config, loss_fn,
                         'RMU')
    result.info['layer'] = layer
    return result
