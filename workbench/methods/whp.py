"""Who's Harry Potter: unlearning by fine-tuning on generic labels.

Eldan and Russinovich, "Who's Harry Potter? Approximate Unlearning in
LLMs", 2023, https://arxiv.org/abs/2310.02238

This is the paper's fine-tuning pipeline, not the inference-time logit mix
that some benchmarks call WHP. For each block of the target text:

1. anchored terms (the story's idiosyncratic names) are replaced by
   generic ones, and the baseline model reads the translated block;
2. a reinforced model (the baseline trained further on the target) shows
   which tokens the target makes more likely;
3. the generic logits combine both,
       v_generic = v_base(translated) - alpha * ReLU(v_reinforced - v_base),
   aligned back to the original block's token positions through the
   tokenizer's character offsets (positions that do not align get no
   label), and their argmax is the generic label;
4. the baseline is fine-tuned on (original block -> generic labels).

Which model reads which text is our reading of the paper (its Sec. 2.3):
the reinforcement difference is taken on the original text, the baseline
prediction it corrects on the translated text. Once an anchored term has
appeared in a block, its later occurrences get no label: training the
model to say "Anna" after it has read "Tamsin" would teach inconsistency,
which the paper warns against.

One addition of ours, on by default (`exclude_anchored`): a generic label
is never the first token of an anchored term. A small baseline that read
a short story prefers its names everywhere, so once the reinforcement
pushes the story's own next word down, its second choice is often a story
name, and fine-tuning on such labels teaches the story's names in new
places. The dictionary lists exactly what a generic model would not say,
so those tokens are left out of the argmax.
"""
import re
from dataclasses import dataclass, field

import torch

from ..core import WorkbenchError
from .base import Plan

NAME = 'whp'
TITLE = ("fine-tuning on generic labels (Eldan and Russinovich; needs "
         "--anchors)")
ORDER = 80
NEEDS = ('tokenizer',)
HELPERS = ()  # the reinforced role, where the task brings no labels


@dataclass
class WHPConfig:
    """Hyperparameters (the paper does not publish them; these are for
    LoRA on a small model)."""
    alpha: float = field(default=2.0, metadata={
        'min': 0.0, 'max': 10.0, 'help': 'weight of the reinforcement '
                                         'difference'})
    lr: float = field(default=1e-3, metadata={
        'min': 1e-5, 'max': 1e-2, 'log': True, 'help': 'AdamW learning rate'})
    steps: int = field(default=12, metadata={
        'min': 1, 'max': 500, 'help': 'fine-tuning updates'})
    batch_size: int = field(default=4, metadata={
        'min': 1, 'max': 32, 'help': 'blocks per update'})
    exclude_anchored: bool = field(default=True, metadata={
        'help': 'no generic label starts an anchored term'})
    seed: int = field(default=0, metadata={
        'min': 0, 'max': 100, 'help': 'random seed'})

    def __post_init__(self):
        if (self.alpha < 0 or not self.lr > 0 or self.steps < 1
                or self.batch_size < 1):
            raise WorkbenchError(f'WHP needs alpha >= 0, lr > 0, steps >= 1 '
                                 f'and batch_size >= 1, got {self}')


Config = WHPConfig


def generic_logits(v_base, v_reinforced, alpha):
    """The generic prediction: logits the reinforced model raised are
    pushed down, by alpha times how much they rose."""
    # v_generic = v_baseline - alpha * ReLU(v_reinforced - v_baseline)
    return v_base - alpha * torch.relu(v_reinforced - v_base)


def _pattern(anchors):
    terms = sorted({a['term'] for a in anchors}, key=len, reverse=True)
    return re.compile(r'(?<!\w)(' + '|'.join(map(re.escape, terms))
                      + r')(?!\w)')


def translate(text, anchors):
    """Replace every anchored term by its generic term. Returns the
    translated text and the occurrences, (start, end, new_start, new_end,
    term) in characters of the original and of the translation."""
    generic = {a['term']: a['generic'] for a in anchors}
    out, occ, last, shift = [], [], 0, 0
    for m in _pattern(anchors).finditer(text):
        g = generic[m.group(1)]
        out.append(text[last:m.start()])
        occ.append((m.start(), m.end(), m.start() + shift,
                    m.start() + shift + len(g), m.group(1)))
        out.append(g)
        shift += len(g) - (m.end() - m.start())
        last = m.end()
    out.append(text[last:])
    return ''.join(out), occ


def map_char(c, occurrences):
    """Where character boundary `c` of the original falls in the
    translation (None inside an anchored term)."""
    shift = 0
    for s, e, ns, ne, _ in occurrences:
        if c <= s:
            break
        if c < e:
            return None
        shift = ne - e
    return c + shift


def alignment(tokenizer, text, anchors):
    """Token ids of the original and of the translated text, and pairs
    (t, j): the context up to original token t is the context up to
    translated token j, so the translation's prediction at j stands in for
    the original's at t. Later occurrences of an anchored term (or of a
    term sharing a word with it) are left out as targets."""
    translated, occ = translate(text, anchors)
    orig = tokenizer(text, return_offsets_mapping=True)
    trans = tokenizer(translated, return_offsets_mapping=True)
    ends = {e: j for j, (_, e) in enumerate(trans['offset_mapping'])}
    repeated, seen = [], set()
    for s, e, _, _, term in occ:
        words = set(term.split())
        if words & seen:
            repeated.append((s, e))
        seen |= words
    offsets = orig['offset_mapping']
    pairs = []
    for t in range(len(offsets) - 1):
        nxt_start, nxt_end = offsets[t + 1]
        if any(s <= nxt_start < e or s < nxt_end <= e
               for s, e in repeated):
            continue
        c = map_char(offsets[t][1], occ)
        if c is not None and c in ends:
            pairs.append((t, ends[c]))
    return orig['input_ids'], trans['input_ids'], pairs, translated


def candidates(v_base, boost, excluded=()):
    """The tokens that can be the argmax of v_base - alpha * boost for
    some alpha >= 0, with or without the `excluded` ones, per position:
    (ids, v_base, boost), (positions, K), padded with v_base = -inf.

    A token the reinforcement did not raise (boost 0) keeps its v_base
    for every alpha, and every other value only falls as alpha grows, so
    nothing below the best such token (not excluded) can ever win. That
    leaves a few tokens per position instead of the whole vocabulary."""
    free = boost == 0
    free[:, list(excluded)] = False
    floor = torch.where(free, v_base, float('-inf')).max(-1).values
    keep = v_base >= floor[:, None]
    k = int(keep.sum(-1).max())
    # the kept tokens first, in vocabulary order, then the rest
    order = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices
    ids = order[:, :k].clone()  # not a view that keeps `order` alive
    vb = torch.where(keep.gather(1, ids), v_base.gather(1, ids),
                     float('-inf'))
    return ids, vb, boost.gather(1, ids)


@torch.no_grad()
def generic_pieces(roles, baseline, reinforced, texts, anchors):
    """What the generic labels of each text are made of, for any alpha:
    (input_ids, aligned positions t, and the `candidates` there: token
    ids, v_base on the translation, the reinforcement boost
    ReLU(v_reinforced - v_base) on the original). `labels_from` turns them
    into labels."""
    parts = []
    device = next(roles.base.parameters()).device
    excluded = anchor_starts(roles.tokenizer, anchors)

    def logits(role, ids):
        with roles.active(role) as m:
            x = torch.tensor([ids], device=device)
            return m(input_ids=x).logits[0].float().cpu()

    for text in texts:
        ids, tids, pairs, _ = alignment(roles.tokenizer, text, anchors)
        if not pairs:
            raise WorkbenchError('no position of a text aligned with its '
                                 'translation')
        t_idx = torch.tensor([p[0] for p in pairs])
        j_idx = torch.tensor([p[1] for p in pairs])
        v_base_orig = logits(baseline, ids)[t_idx]
        boost = torch.relu(logits(reinforced, ids)[t_idx] - v_base_orig)
        parts.append((ids, t_idx, *candidates(logits(baseline, tids)[j_idx],
                                              boost, excluded)))
    return parts


def anchor_starts(tokenizer, anchors):
    """Token ids that begin an anchored term, in running text (after a
    space) and at the start of a text."""
    return sorted({tokenizer(prefix + a['term'], add_special_tokens=False)
                   ['input_ids'][0]
                   for a in anchors for prefix in (' ', '')})


def labels_from(ids, t_idx, cand, v_base, boost, alpha, excluded=()):
    """(input_ids, labels) for one text from its pieces and alpha: at each
    aligned position the candidate token with the highest generic logit,
    never one of the token ids `excluded`."""
    labels = torch.full((len(ids),), -100, dtype=torch.long)
    # generic_logits with the ReLU already applied to the boost
    v = v_base - alpha * boost
    if len(excluded):
        v = v.masked_fill(torch.isin(cand, torch.tensor(list(excluded))),
                          float('-inf'))
    # labels[t + 1] is the target after position t (shifted like ids)
    labels[t_idx + 1] = cand.gather(1, v.argmax(-1, keepdim=True))[:, 0]
    return ids, labels


def whp_loss(model, batch):
    """Cross-entropy of the generic labels given the original text."""
    logits = model(input_ids=batch['input_ids'],
                   attention_mask=batch['attention_mask']).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        batch['labels'][:, 1:].reshape(-1), ignore_index=-100)


def collate(items, pad_id):
    """Right-padded batch of (input_ids, labels) pairs."""
    width = max(len(ids) for ids, _ in items)
    b = {'input_ids': torch.full((len(items), width), pad_id),
         'attention_mask': torch.zeros((len(items), width), dtype=torch.long),
         'labels': torch.full((len(items), width), -100)}
    for i, (ids, labels) in enumerate(items):
        b['input_ids'][i, :len(ids)] = torch.tensor(ids)
        b['attention_mask'][i, :len(ids)] = 1
        b['labels'][i, :len(ids)] = labels
    return b


def plan(task, model, config):
    """Fine-tune `model` on the generic labels of the target texts: those
    of `task.labelled`, or made here from the original and its
    `reinforced` role for `config.alpha`."""
    items = task.labelled
    if items is None:
        if task.roles is None or 'reinforced' not in task.roles.names:
            raise WorkbenchError('whp needs labelled items, or the roles '
                                 'original and reinforced to make them')
        pieces = generic_pieces(task.roles, task.original, 'reinforced',
                                task.forget_texts, task.anchors)
        excluded = (anchor_starts(task.tokenizer, task.anchors)
                    if config.exclude_anchored else ())
        items = [labels_from(*piece, config.alpha, excluded)
                 for piece in pieces]
    pad_id = task.tokenizer.pad_token_id
    gen = torch.Generator().manual_seed(config.seed)

    def batches():
        while True:
            order = torch.randperm(len(items), generator=gen).tolist()
            for i in range(0, len(order), config.batch_size):
                yield collate([items[k] for k in
                               order[i:i + config.batch_size]], pad_id)

    return Plan(whp_loss, batches(), desc='WHP fine-tuning',
                loop={'optimizer': 'adamw', 'betas': (0.9, 0.999)})
