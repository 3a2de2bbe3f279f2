"""Speed and memory, without changing a number: skip this on a first read.

- `heap`: glibc's allocator settings, and freed blocks reused inside a
  training loop or a measurement;
- `trunk`: the frozen lower layers of a model whose adapters sit on its top
  layers, run once per text;
- `head`: the output head applied a chunk of positions at a time (log-
  probabilities and KL with their gradients, without (B, T, V) logits);
- `kv`: KV-cache reuse for greedy continuations and scored continuations;
- `recorded`: a training step's forward pass handed to the evaluation of
  the same weights, instead of a second pass.

Each has a test that compares it with the plain computation.
"""
