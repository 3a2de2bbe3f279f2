"""What `unlearn` reads, checked before anything loads: every input file of
the method (each line's fields and their kinds), files the method does not
read, and the results folder. Each problem is one WorkbenchError."""
import os
from pathlib import Path

from ..core import WorkbenchError, data
from .. import methods

TEXT = ('text',)
PAIRS = ('question', 'answer')
# the files each method reads: option -> (required, fields every line
# needs, why the method needs it); a method not named here reads forget
# and holdout lines, and retain lines where it needs them
FILES = {
    'loo': {'forget': (True, ('text', 'partition'), ''),
            'retain': (True, ('text', 'partition'),
                       'the rest of the training data, by user'),
            'holdout': (False, TEXT, '')},
    'kga': {'forget': (True, TEXT, ''),
            'retain': (True, TEXT, 'the rest of the training data'),
            'new': (True, TEXT, 'text of the same kind, never in the '
                                'training data (D_n)'),
            'holdout': (False, TEXT, '')},
    'llmu': {'forget': (True, PAIRS, ''),
             'retain': (True, PAIRS, 'normal question-answer pairs for the '
                                     'random answers and the KL term')},
    'whp': {'forget': (True, TEXT, ''),
            'anchors': (True, ('term', 'generic'),
                        "a JSONL of {\"term\": ..., \"generic\": ...}, the "
                        "target's idiosyncratic terms and generic "
                        "replacements"),
            'prompts': (False, ('prompt', 'story', 'generic'), '')},
}
OPTIONS = ('forget', 'retain', 'holdout', 'new', 'anchors', 'prompts')


def files_of(name):
    """The files `--method name` reads (see FILES)."""
    if name in FILES:
        return FILES[name]
    needs = methods.get(name).NEEDS
    return {'forget': (True, TEXT, ''),
            'retain': ('retain' in needs, TEXT,
                       'it holds the model on the retain set'),
            'holdout': (False, TEXT, '')}


def check_out(out):
    """The results folder must be a folder this user can write."""
    if out is None:
        return
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise WorkbenchError(f'--out {out} is a file; give a folder for the '
                             f'results')
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise WorkbenchError(f'--out {out}: cannot write in {existing}')


def read_inputs(args):
    """Check the options and read every file `args.method` takes, without
    loading a tokenizer or a model. Returns {option: rows}, rows as
    `workbench.core.data.read_rows` gives them."""
    spec = files_of(args.method)
    for option in OPTIONS:
        if getattr(args, option, None) and option not in spec:
            raise WorkbenchError(f'--{option} is not read by --method '
                                 f'{args.method}')
    for option, (required, _, why) in spec.items():
        if required and not getattr(args, option):
            raise WorkbenchError(f'--method {args.method} needs --{option}'
                                 + (f': {why}' if why else ''))
    check_out(args.out)
    rows = {}
    for option, (_, fields, _) in spec.items():
        if getattr(args, option):
            rows[option] = data.read_rows(getattr(args, option),
                                          f'{option} file', fields)
    if args.method == 'loo':
        users = {str(r['partition']) for r in rows['forget'] + rows['retain']}
        if len(users) < 2:
            raise WorkbenchError('loo needs data of at least 2 partitions '
                                 '(users): one teacher each')
    return rows


def check_lengths(method, rows, tokenizer, limit):
    """Refuse any line of `method`'s files whose text (or question and
    answer) is longer than `limit` tokens."""
    spec = files_of(method)
    for option, lines in rows.items():
        fields = spec[option][1]
        if 'text' in fields:
            data.check_lengths(lines, tokenizer, limit)
        elif fields == PAIRS:
            data.check_lengths(lines, tokenizer, limit, lambda r: data.qa_text(
                r['question'], r['answer']))
