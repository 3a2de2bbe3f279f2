"""Memory and throughput of the unlearning methods in the `7b` profile, on
a GPU.

A randomly initialised model of Mistral-7B's architecture (no download):
LoRA on every linear layer, bf16, gradient checkpointing, the workbench's
training loop, and one of:
- `kl`: gradient ascent plus a KL term to the frozen original through the
  reference (the adapter disabled: no second copy of the weights);
- `ga`: `workbench.methods.ga` as Jang et al. run it (full-batch steps);
- `seul`: `workbench.methods.seul`, spans selected by the current model at
  every step.

    python bench/gpu_7b.py --method ga --steps 5 --batch 8 --tokens 256

Prints peak GPU memory, tokens per second and model FLOP utilisation. On a
machine without a suitable GPU it refuses with one line, before loading.
"""
import argparse
import json
import sys
import time

import torch

from workbench import WorkbenchError, models
from workbench.profiles import get_profile
from workbench.train import TrainConfig, train

PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}  # dense bf16


def build(profile):
    """Mistral-7B's architecture with random weights, on the GPU."""
    from transformers import MistralConfig, MistralForCausalLM
    config = MistralConfig()  # the defaults are Mistral-7B-v0.1's
    torch.manual_seed(0)
    with torch.device('cuda'):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    return models.add_lora(model, profile.lora_r)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--steps', type=int, default=5)
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--tokens', type=int, default=256)
    parser.add_argument('--method', default='kl',
                        choices=['kl', 'ga', 'seul'])
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    profile = get_profile('7b')
    try:
        models.check_gpu_memory(profile)
    except WorkbenchError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    model = build(profile)
    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ids = torch.randint(0, model.config.vocab_size,
                        (args.batch, args.tokens), device='cuda')
    batch = {'input_ids': ids, 'attention_mask': torch.ones_like(ids)}

    def loss(m, b):
        """Gradient ascent plus a KL to the reference (as KGA and Yao et
        al. add), from one forward pass of each model."""
        with torch.no_grad(), models.reference(m) as ref:
            ref_logp = torch.log_softmax(ref(**b).logits[:, :-1].float(), -1)
        logp = torch.log_softmax(m(**b).logits[:, :-1].float(), -1)
        nll = -logp.gather(-1, b['input_ids'][:, 1:, None]).mean()
        kl = torch.nn.functional.kl_div(logp, ref_logp, log_target=True,
                                        reduction='batchmean')
        return -nll + kl, {'nll': nll.item(), 'kl': kl.item()}

    def forever():
        while True:
            yield batch

    def run(steps):
        if args.method == 'kl':
            cfg = TrainConfig(lr=1e-5, steps=steps, progress=False)
            return train(model, loss, forever(), cfg)
        from workbench.methods import ga, seul
        if args.method == 'ga':
            return ga.unlearn(model, batch, ga.GAConfig(
                lr=1e-5, steps=steps, micro_batch=args.batch),
                progress=False)
        return seul.unlearn(model, batch, seul.SeULConfig(
            lr=1e-5, steps=steps, selector='current',
            micro_batch=args.batch), progress=False)

    run(1)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = run(args.steps)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch * args.tokens
    # per token: forward 2N, recomputation under checkpointing 2N,
    # backward 2N (activation gradients only: the frozen weights need
    # none), and for `kl` the reference's forward 2N
    flops = (8 if args.method == 'kl' else 6) * n_params * tokens
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    report = {
        'device': name, 'method': args.method, 'status': result.status,
        'params': n_params, 'trainable': n_train,
        'batch': args.batch, 'tokens_per_sequence': args.tokens,
        'peak_gpu_gb': torch.cuda.max_memory_allocated() / 2**30,
        'tokens_per_s': tokens / seconds, 'step_s': seconds / args.steps,
        'mfu': flops / seconds / 1e12 / peak if peak else None,
    }
    print(json.dumps(report, indent=1))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
