"""Sentence embeddings: a frozen encoder's hidden states, mean-pooled over
the real tokens and normalised (sentence-transformers' recipe for MiniLM).
SISA's shard models (notebook 01) learn on them, and LLMU's proxy judge
(notebook 05) classifies and compares answers by them."""
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def mean_pool(hidden, attention_mask):
    """Mean of the hidden states over real tokens (sentence-transformers)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.inference_mode()
def sentence_embeddings(encoder, tokenizer, texts, batch_size=64,
                        progress=False, max_length=128):
    """(N, d) unit-length embeddings of `texts`, `batch_size` at a time."""
    out = []
    for i in tqdm(range(0, len(texts), batch_size), desc='embedding',
                  disable=not progress):
        enc = tokenizer(texts[i:i + batch_size], return_tensors='pt',
                        padding=True, truncation=True, max_length=max_length)
        h = encoder(**enc).last_hidden_state
        out.append(F.normalize(mean_pool(h, enc['attention_mask']), dim=-1))
    return torch.cat(out)
