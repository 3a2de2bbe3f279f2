"""The frozen trunk: lower layers that no role changes, computed once per
text.

With adapters on the top layers only (a profile's `role_layers`), the
layers below them are the pretrained model's, whatever role is active and
however far training has gone. Their output for a text is then the same in
every epoch of every role's training, in every step of every method and
in every measurement. `FrozenTrunk` keeps it: the first forward pass of a
text runs the bottom layers and stores the hidden state that enters the
first adapted layer; every later pass of that text starts there and runs
only the top layers and the head. On SmolLM2 with adapters on 10 of 30
layers, a forward pass of known texts runs 10 layers instead of 30.

It is exact in what it computes: causal attention makes the hidden state
of a token depend on the tokens before it only, so a right-padded row's
state is that of the row without its padding (up to float rounding, as
any change of batch shape rounds). Where the shortcut would not be the
same model, the full forward pass runs: a pass with a KV cache
(generation, prompt caching), with given positions or embeddings, asking
for hidden states or attentions, or with a bottom layer that is
trainable or carries an adapter. At installation a probe compares the
two paths and leaves the trunk off if they differ (an architecture that
scales its input embeddings, say).
"""
import torch

from .recorded import row_key

MAX_BYTES = 128 * 2 ** 20  # stored hidden states; beyond, new texts run in full
TOLERANCE = 1e-3  # largest logit difference of the probe, in float32
# a forward pass with any of these runs in full
_GIVEN = ('cache', 'past_key_values', 'position_ids', 'inputs_embeds')
_ASKED = ('use_cache', 'output_hidden_states', 'output_attentions')


def trunk_of(model):
    """The enabled `FrozenTrunk` installed on `model`'s decoder, or None."""
    decoder = model.get_decoder() if hasattr(model, 'get_decoder') else None
    forward = vars(decoder).get('forward') if decoder is not None else None
    trunk = getattr(forward, '__self__', None)
    return trunk if isinstance(trunk, FrozenTrunk) and trunk.enabled else None


class FrozenTrunk:
    """Hidden states entering layer `first_trained` of a causal LM, kept
    per text; installed on the model's decoder, which then starts known
    texts there."""

    def __init__(self, model, first_trained, max_bytes=MAX_BYTES):
        self.decoder = model.get_decoder()
        self.layers = self.decoder.layers
        if not 0 < first_trained < len(self.layers):
            raise ValueError(f'first_trained must be in 1..'
                             f'{len(self.layers) - 1}, got {first_trained}')
        self.k = first_trained
        self.bottom = torch.nn.ModuleList(list(self.layers)[:first_trained])
        self.top = torch.nn.ModuleList(list(self.layers)[first_trained:])
        self.max_bytes = max_bytes
        self.states = {}  # row key -> its (width, d) states entering layer k
        self.bytes = 0
        self.hits = self.misses = 0
        self._own = vars(self.decoder).get('forward')  # set on the instance
        self._full = self.decoder.forward
        self.decoder.forward = self.forward
        self.enabled = True
        self.enabled = self._probe(model)

    def clear(self):
        """Forget every stored state (after the bottom weights change)."""
        self.states.clear()
        self.bytes = 0

    def remove(self):
        """Uninstall: the decoder's own forward pass again."""
        if self._own is None:
            del self.decoder.forward
        else:
            self.decoder.forward = self._own
        self.clear()

    def _frozen(self):
        """Whether the bottom layers are the pretrained ones: nothing in
        them trains, and no adapter sits in them."""
        # memory: peft loads SciPy; only where adapters are used
        from peft.tuners.tuners_utils import BaseTunerLayer
        embed = self.decoder.get_input_embeddings()
        return not (any(p.requires_grad for p in embed.parameters()) or any(
            p.requires_grad for p in self.bottom.parameters()) or any(
            isinstance(m, BaseTunerLayer) for m in self.bottom.modules()))

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        """The decoder's forward pass, from the stored states when it can."""
        if (not self.enabled or input_ids is None or input_ids.dim() != 2
                or any(kwargs.get(k) is not None for k in _GIVEN)
                or any(kwargs.get(k) for k in _ASKED)
                or not self._frozen()):
            return self._full(input_ids=input_ids,
                              attention_mask=attention_mask, **kwargs)
        hidden = self.hidden(input_ids, attention_mask)
        if hidden is None:
            return self._full(input_ids=input_ids,
                              attention_mask=attention_mask, **kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in _GIVEN}
        kwargs['use_cache'] = False
        self.decoder.layers = self.top
        try:
            return self._full(inputs_embeds=hidden,
                              attention_mask=attention_mask, **kwargs)
        finally:
            self.decoder.layers = self.layers

    @torch.no_grad()
    def _bottom(self, input_ids, attention_mask):
        """The hidden states entering layer k, by the bottom layers."""
        seen = []
        hook = self.bottom[-1].register_forward_hook(
            lambda m, args, out: seen.append(
                out[0] if isinstance(out, tuple) else out))
        self.decoder.layers = self.bottom
        try:
            self._full(input_ids=input_ids, attention_mask=attention_mask,
                       use_cache=False)
        finally:
            self.decoder.layers = self.layers
            hook.remove()
        return seen[-1]

    def hidden(self, input_ids, attention_mask=None):
        """(B, T, d) states entering layer k for a batch (zeros past each
        row's last real token), running the bottom layers for the rows
        not stored yet; None when the store is full."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ids_cpu, am_cpu = input_ids.cpu(), attention_mask.cpu()
        keys = [row_key(i, a) for i, a in zip(ids_cpu, am_cpu)]
        new = {}  # row key -> first row holding it, for those not stored
        for b, key in enumerate(keys):
            if key not in self.states:
                new.setdefault(key, b)
        if new:
            widths = [len(key[0]) for key in new]
            embed = self.decoder.get_input_embeddings().weight
            size = sum(widths) * embed.shape[-1] * embed.element_size()
            if self.bytes + size > self.max_bytes:
                return None
            rows = torch.tensor(list(new.values()), device=input_ids.device)
            w = max(widths)
            h = self._bottom(input_ids[rows, :w], attention_mask[rows, :w])
            for j, key in enumerate(new):
                self.states[key] = h[j, :widths[j]].clone()
            self.bytes += size
        self.hits += len(keys) - len(new)
        self.misses += len(new)
        B, T = input_ids.shape
        first = self.states[keys[0]]
        out = first.new_zeros((B, T, first.shape[-1]))
        for b, key in enumerate(keys):
            state = self.states[key]
            out[b, :state.shape[0]] = state
        return out

    @torch.no_grad()
    def _probe(self, model):
        """Whether the shortcut gives the full pass's logits on a probe
        batch (two rows, one right-padded), read twice (stored, then
        from the store)."""
        if not self._frozen():
            return False
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        vocab = model.config.vocab_size
        ids = torch.randint(vocab, (2, 12), generator=gen).to(device)
        am = torch.ones_like(ids)
        am[1, 7:] = 0
        was = model.training
        model.eval()
        try:
            self.enabled = False
            full = model(input_ids=ids, attention_mask=am).logits.float()
            self.enabled = True
            first = model(input_ids=ids, attention_mask=am).logits.float()
            again = model(input_ids=ids, attention_mask=am).logits.float()
        finally:
            model.train(was)
            self.clear()
            self.hits = self.misses = 0
        real = am.bool()
        return bool(all(
            (x - full)[real].abs().max().item() <= TOLERANCE
            for x in (first, again)))
