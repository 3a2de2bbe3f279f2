"""Next-token statistics from logits: the plain computation that scoring
and a recorded training step share."""
import torch


def next_token(logits, ids, am):
    """`logprob`, `hit` and `mask` of one batch from its float logits of
    positions 0..T-2, and logsumexp(z) of each position."""
    target = ids[:, 1:]
    # log p(x_t) = z_t - logsumexp(z), without a second (B, T, V) tensor
    lse = torch.logsumexp(logits, dim=-1)
    return {'logprob': logits.gather(-1, target[..., None])[..., 0] - lse,
            'hit': logits.argmax(-1) == target,
            'mask': am[:, 1:].bool() & am[:, :-1].bool()}, lse



def pad_to(t, width):
    """Right-pad a (B, w) tensor with zeros (False) to (B, width)."""
    return torch.nn.functional.pad(t, (0, width - t.shape[1]))

