"""Offline sensitive-span annotation in two stages (Wang et al., AAAI 2025).

Stage one proposes: an instruct model is asked to copy every personal detail
of a text, one per line; each line (and each piece of it between ':', ';'
or ',') that occurs verbatim in the text is a candidate. Stage two verifies:
for each candidate the model is asked whether it is personal information,
and answers by the probability of "yes" against "no".

Small instruct models are weak annotators (SmolLM2-135M mostly copies the
whole text and answers "no" to everything), so rules stand beside the
model: patterns for emails, phone numbers, dates, street addresses and
capitalised names also propose, and vouch for their own matches; the model
verifies what only it proposed. `annotate` reports how many spans each
source gave, and the results are cached as JSON, since a model's answers
change with its version.
"""
import json
import re
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..core import WorkbenchError
from ..core.scoring import greedy_continue
from ..core.cache import cached_json, is_cached, key_of
from ..core.models import in_child, inference_gib, load_causal_lm
from ..core.profiles import Profile

PROMPT_VERSION = 2  # of the prompts and the rules: part of the cache key
MONTHS = ('January|February|March|April|May|June|July|August|September|'
          'October|November|December')
WEEKDAYS = 'Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday'
PATTERNS = {
    'email': r'[\w.+-]+@[\w-]+(?:\.[\w-]+)+',
    'phone': r'(?:\+?\d{1,3}[-. ])?\(?\d{3}\)?[-. ]?\d{3}[-. ]\d{4}'
             r'(?:\s*x\d+)?',
    'date': rf'(?:{MONTHS}) \d{{1,2}}, \d{{4}}',
    'address': r'\d{1,6}(?: (?!Apt\.|Suite)[A-Z][a-z]+){1,3}'
               r'(?: (?:Apt\.|Suite) \d+)?',
    # capitalised words; at a sentence start only with a second one
    'name': r"(?:(?<=[a-z,] )|(?<=^)|(?<=[.;!?] ))"
            r"[A-Z][\w'-]+(?: (?:and )?[A-Z][\w'-]+)*",
}
_SENTENCE_START = re.compile(r'(?:^|[.;!?] )$')


def rule_spans(text):
    """Candidate spans `[start, end, kind]` from the patterns."""
    out = []
    for kind, pattern in PATTERNS.items():
        for m in re.finditer(pattern, text):
            word_count = len(m.group().split())
            at_start = _SENTENCE_START.search(text[:m.start()]) is not None
            if kind == 'name' and (at_start and word_count < 2
                                   or re.fullmatch(MONTHS, m.group())
                                   or re.fullmatch(WEEKDAYS, m.group())):
                continue
            out.append([m.start(), m.end(), kind])
    return out


def _chat(tokenizer, content):
    messages = [{'role': 'user', 'content': content}]
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=True)


def chat_ids(tokenizer, content):
    """Token ids of one user turn in the model's chat template, ready for
    the reply. The template writes its own special tokens (Llama's and
    Mistral's open with BOS), so the tokenizer adds none, as
    `apply_chat_template(tokenize=True)` does."""
    return tokenizer(_chat(tokenizer, content),
                     add_special_tokens=False)['input_ids']


def propose_prompt(text):
    return ('List every personal detail in this text (names, dates, '
            'places, employers, emails, phone numbers, addresses), one per '
            f'line, copied exactly.\n\nText: {text}')


def verify_prompt(text, candidate):
    return (f'Text: {text}\n\nIs "{candidate}" personal information about '
            f'a person in the text? Answer yes or no.')


def llm_proposals(model, tokenizer, texts, max_new_tokens=64):
    """Stage one: verbatim fragments of the model's list, per text."""
    prompts = [chat_ids(tokenizer, propose_prompt(t)) for t in texts]
    gens = greedy_continue(model, prompts, [max_new_tokens] * len(texts),
                           tokenizer.pad_token_id)
    out = []
    for text, g in zip(texts, gens):
        if tokenizer.eos_token_id in g:
            g = g[:g.index(tokenizer.eos_token_id)]
        found = set()
        for piece in re.split(r'\n|:|;|, |\d+\. ', tokenizer.decode(g)):
            piece = piece.strip(' .-*"')
            # a copy of (most of) the text is not a detail
            if len(piece) >= 3 and len(piece) < len(text) / 2:
                for m in re.finditer(re.escape(piece), text):
                    found.add((m.start(), m.end()))
        out.append(sorted(found))
    return out


@torch.no_grad()
def llm_yes_probability(model, tokenizer, text, candidates):
    """Stage two: P(yes) / (P(yes) + P(no)) for each candidate."""
    if not candidates:
        return []
    # the first token of each word itself (not a BOS the tokenizer adds)
    yes, no = ([tokenizer.encode(w, add_special_tokens=False)[0]
                for w in (word, word.lower(), ' ' + word, ' ' + word.lower())]
               for word in ('Yes', 'No'))
    probs = []
    for c in candidates:
        ids = torch.tensor([chat_ids(tokenizer, verify_prompt(text, c))])
        logp = model(input_ids=ids.to(model.device),
                     logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
        odds = torch.logsumexp(logp[yes], 0) - torch.logsumexp(logp[no], 0)
        probs.append(torch.sigmoid(odds).item())
    return probs


def _merge(spans):
    """Union of overlapping or touching spans, sorted."""
    out = []
    for s, e in sorted((s[0], s[1]) for s in spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def _key(texts, model_name):
    return key_of(PROMPT_VERSION, model_name or 'rules', list(texts))


def cached(texts, model_name):
    """Whether the annotation of `texts` by `model_name` is cached."""
    return is_cached('annotations', _key(texts, model_name))


def annotate_with(texts, model_name, profile, progress=True):
    """`annotate` by the instruct model `model_name` (or 'rules'), loaded
    as `profile` loads models. A model is loaded in a child process, which
    caches its answers for this one to read: it is a second model beside
    the one being unlearned, and the memory it took would stay with this
    process for good."""
    if model_name in ('', 'rules') or cached(texts, model_name):
        return annotate(texts, None, None, model_name, progress=progress)
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / 'job.json'
        job.write_text(json.dumps({'texts': texts, 'model': model_name,
                                   'profile': profile.as_dict(),
                                   'progress': progress}))
        code, last = in_child('workbench.experiments.annotate',
                              '_annotate_job', str(job), relay=progress)
    if code or not cached(texts, model_name):
        raise WorkbenchError(f'annotating with {model_name!r} failed: '
                             f'{last}')
    return annotate(texts, None, None, model_name, progress=progress)


def _annotate_job(path):
    """What `annotate_with`'s child process runs."""
    job = json.loads(Path(path).read_text())
    profile = Profile(**job['profile'])
    # it only reads: it needs its own weights' room on the GPU, not the
    # profile's for training (the parent's model holds the rest)
    model, tok = load_causal_lm(job['model'], profile,
                                need_gib=inference_gib(job['model'],
                                                       profile))
    annotate(job['texts'], model, tok, job['model'],
             progress=job['progress'])


def annotate(texts, model=None, tokenizer=None, model_name='', cache=True,
             progress=True):
    """Sensitive spans `[start, end]` of each text, and a report.

    With `model` (an instruct model named `model_name`) both stages use
    it, with the rules beside it; with `model_name` '' or 'rules', the
    rules alone annotate. Cached by model name and texts.
    """
    if cache:
        return cached_json('annotations', _key(texts, model_name),
                           lambda: annotate(texts, model, tokenizer,
                                            model_name, False, progress))[0]
    if model is None and model_name not in ('', 'rules'):
        raise ValueError(f'{model_name!r} is not cached; pass the model')
    proposed = (llm_proposals(model, tokenizer, texts) if model is not None
                else [[] for _ in texts])
    spans, report = [], {'llm_proposed': 0, 'rule_proposed': 0,
                         'llm_confirmed': 0, 'rule_confirmed': 0,
                         'rejected': 0, 'model': model_name or 'rules'}
    for text, llm in tqdm(list(zip(texts, proposed)), desc='annotating',
                          disable=not progress, leave=False):
        rules = [(s[0], s[1]) for s in rule_spans(text)]
        report['llm_proposed'] += len(llm)
        report['rule_proposed'] += len(set(rules) - set(llm))
        # a pattern vouches for its own matches; the model verifies the rest
        kept = sorted(set(rules))
        report['rule_confirmed'] += len(kept)
        ask = sorted(set(llm) - set(rules))
        probs = (llm_yes_probability(model, tokenizer, text,
                                     [text[s:e] for s, e in ask])
                 if model is not None else [])
        for (s, e), p in zip(ask, probs):
            if p > 0.5:
                report['llm_confirmed'] += 1
                kept.append((s, e))
            else:
                report['rejected'] += 1
        spans.append(_merge(kept))
    return {'spans': spans, 'report': report}
