"""The shipped data sets (data/), user JSONL files, and tokenisation.

Every set is a JSONL file loaded through `datasets`; see each folder's
README for source, license and fields.
"""
import csv
import io
import json
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

from . import WorkbenchError
from .paths import DATA_DIR

SETS = {'people': 'people/people.jsonl',
        'letters': 'letters/letters.jsonl',
        'world_facts': 'world_facts/world_facts.jsonl',
        'canaries': 'canaries/canaries.jsonl',
        'toxicity': 'toxicity/toxicity.jsonl',
        'harmful': 'harmful/harmful.jsonl'}
QA_TEMPLATE = 'Question: {question}\nAnswer: {answer}'


@contextmanager
def _quiet_datasets():
    """No `datasets` progress bars while a small shipped set is read (or
    first cached): they would land in a command's one-line error."""
    # memory: datasets (pyarrow under it) only when a shipped set is read
    import datasets
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


def load(name):
    """A shipped data set as a `datasets.Dataset`."""
    # memory: as above
    from datasets import load_dataset
    if name not in SETS:
        raise WorkbenchError(f'unknown data set {name!r}; choose one of '
                             f'{", ".join(SETS)}')
    with _quiet_datasets():
        return load_dataset('json', data_files=str(DATA_DIR / SETS[name]),
                            split='train')


def people(split, n=None, name='people'):
    """The first `n` people of a split: 'forget', 'retain' or 'unseen'
    (of another set split the same way with `name`)."""
    with _quiet_datasets():
        ds = load(name).filter(lambda r: r['split'] == split)
    if len(ds) == 0:
        raise WorkbenchError(f'no {name} in split {split!r}')
    if n is not None and n > len(ds):
        raise WorkbenchError(f'asked for {n} {name} in split {split!r}, '
                             f'which has {len(ds)}')
    return [dict(r) for r in ds.select(range(n or len(ds)))]


def everyday_texts():
    """Everyday prose no model here trains on (the normal answers of
    data/harmful): the text whose perplexity says a model still speaks."""
    return [qa_text(r['question'], r['answer']) for r in load('harmful')
            if r['kind'] == 'normal']


def letters(split, n=None):
    """The letters of the first `n` people of a split (data/letters)."""
    return people(split, n, 'letters')


def world_facts(n=None):
    """The first `n` general-knowledge questions, for utility."""
    ds = load('world_facts')
    return [dict(r) for r in ds.select(range(min(n or len(ds), len(ds))))]


def toxicity(split=None):
    """Toxicity rows ('train', 'val', 'test' or all): text, label, topic."""
    rows = [dict(r) for r in load('toxicity')]
    if split is None:
        return rows
    rows = [r for r in rows if r['split'] == split]
    if not rows:
        raise WorkbenchError(f"no toxicity rows in split {split!r}; choose "
                             f"'train', 'val' or 'test'")
    return rows


def qa_text(question, answer):
    """One Q&A pair in the workbench's prompt template."""
    return QA_TEMPLATE.format(question=question, answer=answer)


def tokenize(tokenizer, texts, max_length=None):
    """Right-padded `input_ids` and `attention_mask` for a list of texts."""
    enc = tokenizer(list(texts), return_tensors='pt', padding=True,
                    truncation=max_length is not None, max_length=max_length)
    return {'input_ids': enc['input_ids'],
            'attention_mask': enc['attention_mask']}


def used_width(attention_mask):
    """Columns up to the last real token of any row (at least 2)."""
    cols = attention_mask.any(0).nonzero()
    return max(2, int(cols[-1]) + 1) if len(cols) else attention_mask.shape[1]


# the fields a user's JSONL line may carry, and what each must be
_TEXT = (str,)
FIELDS = {'text': _TEXT, 'question': _TEXT, 'answer': _TEXT,
          'prefix': _TEXT, 'secret': _TEXT, 'term': _TEXT,
          'generic': _TEXT, 'prompt': _TEXT, 'story': _TEXT,
          'partition': (str, int), 'spans': (list,)}


def _lines(path, what):
    """The lines of a UTF-8 text file, or one error saying why not."""
    path = Path(path)
    if path.is_dir():
        raise WorkbenchError(f'{what} {path} is a folder, not a JSONL file')
    if not path.exists():
        raise WorkbenchError(f'{what} {path} does not exist')
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise WorkbenchError(f'{what} {path} cannot be read: {e.strerror}')
    try:
        text = raw.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b'\n') + 1
        raise WorkbenchError(f'{path}:{line}: not UTF-8 text (byte '
                             f'0x{raw[e.start]:02x}); save the file as UTF-8')
    return text.splitlines()


def _check_field(path, i, row, key):
    value = row[key]
    if not isinstance(value, FIELDS[key]) or isinstance(value, bool):
        kinds = ' or '.join({'str': 'a string', 'int': 'a whole number',
                             'list': 'a list'}[t.__name__]
                            for t in FIELDS[key])
        raise WorkbenchError(f'{path}:{i}: "{key}" must be {kinds}, got '
                             f'{json.dumps(value)[:40]}')
    if key == 'spans':
        for span in value:
            ok = (isinstance(span, list) and len(span) == 2
                  and all(isinstance(x, int) and not isinstance(x, bool)
                          for x in span)
                  and 0 <= span[0] < span[1] <= len(row.get('text', '')))
            if not ok:
                raise WorkbenchError(f'{path}:{i}: span {json.dumps(span)} '
                                     f'is not [start, end] inside the text')


class Rows(list):
    """The rows of a user's file, with its `path` and each row's line
    number (`lines`), for errors found later."""
    def __init__(self, rows, path, lines):
        super().__init__(rows)
        self.path, self.lines = path, lines


def read_rows(path, what='file', required=('text',)):
    """Read and check a user's JSONL file without loading anything else;
    every problem is one error naming the file and line.

    Each line is an object with the `required` fields (non-empty); every
    field of FIELDS it has must be of its kind (`spans`: character offsets
    `[start, end]` inside the text).
    """
    rows, numbers = [], []
    for i, line in enumerate(_lines(path, what), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkbenchError(f'{path}:{i}: not valid JSON ({e.msg})')
        if not isinstance(row, dict):
            raise WorkbenchError(f'{path}:{i}: each line must be a JSON '
                                 f'object, got {json.dumps(row)[:40]}')
        for key in required:
            if key not in row or (isinstance(row[key], str)
                                  and not row[key].strip()):
                names = ' and '.join(f'"{k}"' for k in required)
                raise WorkbenchError(
                    f'{path}:{i}: each line needs a non-empty {names}'
                    + (' field' if len(required) == 1
                       else f' ("{key}" is missing or empty)'))
        for key in FIELDS.keys() & row.keys():
            _check_field(path, i, row, key)
        rows.append(row)
        numbers.append(i)
    if not rows:
        raise WorkbenchError(f'{what} {path} is empty: nothing to use')
    return Rows(rows, path, numbers)


def check_lengths(rows, tokenizer, max_tokens, text_of=None):
    """Refuse any of `rows` (read by `read_rows`) whose text (`row['text']`,
    or `text_of(row)`) is longer than `max_tokens` tokens."""
    for i, row in zip(rows.lines, rows):
        text = text_of(row) if text_of else row['text']
        n = len(tokenizer(text)['input_ids'])
        if n > max_tokens:
            raise WorkbenchError(
                f'{rows.path}:{i}: text is {n} tokens, longer than the '
                f'{max_tokens} this model and profile allow')
    return rows


def read_jsonl(path, tokenizer=None, max_tokens=None, what='file'):
    """`read_rows` of lines with "text", each no longer than `max_tokens`
    tokens of `tokenizer` (when given)."""
    rows = read_rows(path, what)
    if tokenizer is not None and max_tokens is not None:
        check_lengths(rows, tokenizer, max_tokens)
    return rows


def batches(data, batch_size, generator=None):
    """Shuffled minibatches (dicts of tensors) from tokenised data, forever."""
    n = data['input_ids'].shape[0]
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield {k: v[idx] for k, v in data.items()}


def bucketed_batches(data, batch_size, generator=None):
    """Shuffled minibatches of texts of similar length, forever: the rows
    are sorted by length and cut into batches, each cut to its longest text
    (so short texts are not padded to long ones), and the batches come in a
    new random order each epoch. For right-padded (B, T) tensors."""
    lengths = data['attention_mask'].sum(1)
    order = torch.argsort(lengths, stable=True)
    groups = [order[i:i + batch_size]
              for i in range(0, len(order), batch_size)]
    while True:
        for g in torch.randperm(len(groups), generator=generator):
            idx = groups[g]
            width = used_width(data['attention_mask'][idx])
            yield {k: v[idx][:, :width] for k, v in data.items()}


def targets(batch):
    """(B, T-1) mask of the real targets of a right-padded batch: every
    position whose token and next token are real (by the attention mask,
    never by token id), and in `target_mask` when the batch has one."""
    am = batch['attention_mask']
    mask = am[:, 1:].bool() & am[:, :-1].bool()
    if 'target_mask' in batch:
        mask = mask & batch['target_mask'][:, 1:].to(mask.device).bool()
    return mask


def full_batches(data, micro_batch):
    """The whole data set as one batch per step, in `micro_batch`-sized
    chunks (for gradient accumulation), forever.

    Returns (iterator, chunks per step). Each chunk is cut to its longest
    text and carries `share`, its part of the set's real targets: a loss
    that is a mean over a chunk's targets, weighted by its share, sums to
    the mean over the whole set's, whatever the micro-batch.
    """
    n = data['input_ids'].shape[0]
    chunks = -(-n // max(1, micro_batch))
    bounds = [round(i * n / chunks) for i in range(chunks + 1)]
    width = data['input_ids'].shape[1]
    total = int(targets(data).sum())
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        part = {k: v[a:b] for k, v in data.items()}
        used = used_width(part['attention_mask'])
        part = {k: v[:, :used] if v.dim() == 2 and v.shape[1] == width
                else v for k, v in part.items()}
        share = int(targets(part).sum()) / total if total else 1 / chunks
        parts.append({**part, 'share': share})

    def gen():
        while True:
            yield from parts
    return gen(), chunks


EXTRACTION_URL = ('https://raw.githubusercontent.com/joeljang/'
                  'knowledge-unlearning/main/{path}')


def extraction_challenge(n=32, draw=0, holdout=200):
    """Jang et al.'s own setting (online only): the forget set
    `data/main/lm_extraction_{n}_{draw}.csv` from the paper's repository
    (Pile sequences of the Training Data Extraction Challenge, which
    GPT-Neo was trained on) and `holdout` documents of its
    `validation_data/pile.csv` for the thresholds. Returns rows per split,
    as `people` does."""

    def fetch(path):
        url = EXTRACTION_URL.format(path=path)
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return list(csv.DictReader(io.StringIO(r.read().decode())))
        except OSError as e:
            raise WorkbenchError(f'cannot download {url} ({e}); this '
                                 f'target needs the internet') from None
    forget = fetch(f'data/main/lm_extraction_{n}_{draw}.csv')
    unseen = fetch('validation_data/pile.csv')[:holdout]
    for rows in (forget, unseen):
        if not rows or 'text' not in rows[0]:
            raise WorkbenchError('the downloaded CSV has no "text" column')
    return {'forget': [{'text': r['text']} for r in forget],
            'unseen': [{'text': r['text']} for r in unseen]}


def prompt_of(question):
    """The prompt part of the Q&A template, up to 'Answer:'."""
    return QA_TEMPLATE.format(question=question, answer='').rstrip()


def qa_batch(tokenizer, questions, answers, eos=False):
    """Token ids of prompt + ' ' + answer, and a mask of the answer tokens.

    Prompt and answer are tokenised apart and joined, so the boundary is
    exact. With `eos`, each answer ends with the tokenizer's end-of-sequence
    token, as TOFU's and OpenUnlearning's answers do: `target_mask` then
    covers the answer and its EOS, and `answer_mask` the answer alone (the
    tokens OpenUnlearning's per-token metrics read).
    """
    rows, targets = [], []
    for q, a in zip(questions, answers):
        p = tokenizer(prompt_of(q))['input_ids']
        # the answer continues the prompt: no BOS of its own (Llama's and
        # Mistral's tokenizers would put one between question and answer)
        t = tokenizer(' ' + a, add_special_tokens=False)['input_ids']
        if eos:
            t = t + [tokenizer.eos_token_id]
        rows.append(p + t)
        targets.append([0] * len(p) + [1] * len(t))
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros_like(mask)
    for i, (r, t) in enumerate(zip(rows, targets)):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
        target[i, :len(t)] = torch.tensor(t)
    out = {'input_ids': ids, 'attention_mask': mask, 'target_mask': target}
    if eos:  # every row ends with its EOS
        answer = target.clone()
        answer[torch.arange(len(rows)), mask.sum(1) - 1] = 0
        out['answer_mask'] = answer
    return out


def right_padded(seqs):
    """Token lists as a right-padded (B, T) batch (zeros) and its mask."""
    x = torch.zeros((len(seqs), max(map(len, seqs))), dtype=torch.long)
    mask = torch.zeros_like(x)
    for r, seq in enumerate(seqs):
        x[r, :len(seq)] = torch.tensor(seq)
        mask[r, :len(seq)] = 1
    return x, mask
