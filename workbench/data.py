"""The shipped data sets (data/), user JSONL files, and tokenisation.

Every set is a JSONL file loaded through `datasets`; see each folder's
README for source, license and fields.
"""
import json
from pathlib import Path

import torch

from . import WorkbenchError
from .paths import DATA_DIR

SETS = {'people': 'people/people.jsonl',
        'world_facts': 'world_facts/world_facts.jsonl',
        'canaries': 'canaries/canaries.jsonl'}
QA_TEMPLATE = 'Question: {question}\nAnswer: {answer}'


def load(name):
    """A shipped data set as a `datasets.Dataset`."""
    from datasets import load_dataset
    if name not in SETS:
        raise WorkbenchError(f'unknown data set {name!r}; choose one of '
                             f'{", ".join(SETS)}')
    return load_dataset('json', data_files=str(DATA_DIR / SETS[name]),
                        split='train')


def people(split, n=None):
    """The first `n` people of a split: 'forget', 'retain' or 'unseen'."""
    ds = load('people').filter(lambda r: r['split'] == split)
    if len(ds) == 0:
        raise WorkbenchError(f'no people in split {split!r}')
    if n is not None and n > len(ds):
        raise WorkbenchError(f'asked for {n} people in split {split!r}, '
                             f'which has {len(ds)}')
    return [dict(r) for r in ds.select(range(n or len(ds)))]


def world_facts(n=None):
    """The first `n` general-knowledge questions, for utility."""
    ds = load('world_facts')
    return [dict(r) for r in ds.select(range(min(n or len(ds), len(ds))))]


def qa_text(question, answer):
    """One Q&A pair in the workbench's prompt template."""
    return QA_TEMPLATE.format(question=question, answer=answer)


def tokenize(tokenizer, texts, max_length=None):
    """Right-padded `input_ids` and `attention_mask` for a list of texts."""
    enc = tokenizer(list(texts), return_tensors='pt', padding=True,
                    truncation=max_length is not None, max_length=max_length)
    return {'input_ids': enc['input_ids'],
            'attention_mask': enc['attention_mask']}


def read_jsonl(path, tokenizer=None, max_tokens=None, what='file'):
    """Read a user's JSONL file, checking every line; errors are one line.

    Each line is an object with `text`, and optionally `spans` (character
    offsets `[start, end]`), `question` and `answer`.
    """
    path = Path(path)
    if not path.is_file():
        raise WorkbenchError(f'{what} {path} does not exist')
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise WorkbenchError(f'{path}:{i}: not valid JSON ({e.msg})')
        if not isinstance(row, dict) or not str(row.get('text', '')).strip():
            raise WorkbenchError(f'{path}:{i}: each line needs a non-empty '
                                 f'"text" field')
        for span in row.get('spans', []):
            ok = (isinstance(span, list) and len(span) >= 2
                  and 0 <= span[0] < span[1] <= len(row['text']))
            if not ok:
                raise WorkbenchError(f'{path}:{i}: span {span} is not '
                                     f'[start, end] inside the text')
        if tokenizer is not None and max_tokens is not None:
            n = len(tokenizer(row['text'])['input_ids'])
            if n > max_tokens:
                raise WorkbenchError(
                    f'{path}:{i}: text is {n} tokens, longer than the '
                    f'{max_tokens} this model and profile allow')
        rows.append(row)
    if not rows:
        raise WorkbenchError(f'{what} {path} is empty: nothing to use')
    return rows


def batches(data, batch_size, generator=None):
    """Shuffled minibatches (dicts of tensors) from tokenised data, forever."""
    n = data['input_ids'].shape[0]
    while True:
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield {k: v[idx] for k, v in data.items()}
