"""The output head a chunk of positions at a time. Changes no number.

A 49k-token vocabulary makes a batch's (B, T, V) logits, their log-softmax
and their gradient the largest tensors of a step. With the head frozen (a
LoRA model's), log p(y) and a KL to fixed targets depend on each
position's last hidden state alone, so they are computed `chunk`
positions at a time, and so are their gradients for the hidden states:
the same values, to rounding, in the memory of one chunk's logits.
The plain expressions are in `scoring` (`token_logprobs` and `vocab_kl`
take them when the head trains, or the model has no separate head).
"""
import torch


def _head_chunks(hidden, weight, bias, target, chunk, jacobian):
    """log p(y) and whether y is the argmax at N positions whose last
    hidden states are `hidden` (N, d), for the head's (V, d) weight and
    bias and the (N,) targets y, `chunk` positions' logits at a time; with
    `jacobian`, also d log p(y) / dh = (onehot(y) - softmax(z)) W, (N, d)."""
    n = hidden.shape[0]
    logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
    hit = torch.empty(n, dtype=torch.bool, device=hidden.device)
    jac = torch.empty_like(hidden) if jacobian else None
    for i in range(0, n, chunk):
        y = target[i:i + chunk]
        z = torch.nn.functional.linear(hidden[i:i + chunk], weight,
                                       bias).float()
        hit[i:i + chunk] = z.argmax(-1) == y
        z_y = z.gather(-1, y[:, None])[:, 0]
        # logsumexp(z) with exp(z - max) in place: one (chunk, V) tensor
        top = z.amax(-1, keepdim=True)
        total = z.sub_(top).exp_().sum(-1, keepdim=True)
        logp[i:i + chunk] = z_y - (top + total.log())[:, 0]
        if jacobian:
            # softmax(z) - onehot(y), in float32 (as the gradient of a
            # cross-entropy is), then through the head
            dz = z.div_(total)
            dz[torch.arange(len(y), device=dz.device), y] -= 1
            jac[i:i + chunk] = (dz.to(weight.dtype) @ weight).neg_().to(
                hidden.dtype)
    return logp, hit, jac


class _HeadLogprob(torch.autograd.Function):
    """`head_logprobs` with its gradient for the hidden states (the head
    frozen). log p(y) at a position depends on that position's hidden
    state only, so its gradient is one d-vector per position, computed in
    the forward pass from the same chunk of logits: the backward pass
    scales it, and no (N, V) tensor is ever kept."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, chunk):
        logp, hit, jac = _head_chunks(hidden, weight, bias, target, chunk,
                                      jacobian=True)
        ctx.save_for_backward(jac)
        ctx.mark_non_differentiable(hit)
        return logp, hit

    @staticmethod
    def backward(ctx, grad, _):
        jac, = ctx.saved_tensors
        return grad[:, None].to(jac.dtype) * jac, None, None, None, None


def head_logprobs(hidden, head, target, chunk=128):
    """log p(y) of the targets (N,) at positions whose last hidden states
    are `hidden` (N, d), the logits being `head(hidden)` (a linear layer),
    and whether each target is the argmax: the numbers of a log-softmax of
    the whole (N, V) logits, in the memory of `chunk` positions' logits.
    With gradients on, the head must be frozen (a LoRA model's is); the
    gradient for `hidden` is that of the plain expression, to rounding."""
    if torch.is_grad_enabled() and hidden.requires_grad:
        if head.weight.requires_grad or (head.bias is not None
                                         and head.bias.requires_grad):
            raise ValueError('head_logprobs computes no gradient for the '
                             'head; train it through the full logits')
        return _HeadLogprob.apply(hidden, head.weight, head.bias, target,
                                  chunk)
    logp, hit, _ = _head_chunks(hidden, head.weight, head.bias, target,
                                chunk, jacobian=False)
    return logp, hit


class _HeadKL(torch.autograd.Function):
    """sum over positions of KL(target || softmax(h W^T + b)) for (N, d)
    hidden states h, the output head's (V, d) weight W and bias b, and (N,
    V) target log-distributions, computed `chunk` positions at a time and
    never held for all N: the backward pass recomputes each chunk's logits
    z, whose gradient is softmax(z) sum_v exp(t_v) - exp(t)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, target_logp, chunk):
        ctx.save_for_backward(hidden, weight, bias, target_logp)
        ctx.chunk = chunk
        total = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, hidden.shape[0], chunk):
            z = torch.nn.functional.linear(hidden[i:i + chunk], weight,
                                           bias).float()
            logp = torch.log_softmax(z, -1)
            del z
            t = target_logp[i:i + chunk].float()  # may be the target itself
            # sum_v exp(t) (t - logp), in place in logp
            total += logp.neg_().add_(t).mul_(t.exp()).sum()
        return total

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, target_logp = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(bias) if need_b else None
        for i in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[i:i + ctx.chunk]
            z = torch.nn.functional.linear(h, weight, bias).float()
            q = target_logp[i:i + ctx.chunk].float().exp()
            # softmax(z) sum(q) - q: a float16 target sums to 1 only nearly
            dz = torch.softmax(z, -1).mul_(q.sum(-1, keepdim=True)).sub_(
                q).mul_(grad).to(weight.dtype)
            if need_h:
                grad_h[i:i + ctx.chunk] = (dz @ weight).to(hidden.dtype)
            if need_w:  # a trainable head (or embeddings tied to it)
                grad_w += dz.T @ h.to(weight.dtype)
            if need_b:
                grad_b += dz.sum(0)
        return grad_h, grad_w, grad_b, None, None


def head_kl_sum(hidden, head, target_logp, chunk=128):
    """The sum of KL(target || model) over positions whose (N, d) last
    hidden states are `hidden`, the model's logits being `head(hidden)`
    (a linear layer): as `token_kl` of the log-softmax of those logits
    (a sum, not a mean), with its gradient, in the memory of `chunk`
    positions' logits instead of all N."""
    return _HeadKL.apply(hidden, head.weight, head.bias, target_logp, chunk)
