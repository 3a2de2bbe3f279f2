"""Run a method on a user's own JSONL files: the `unlearn` command."""
import json
import sys
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path

from ..core import WorkbenchError, data, models

from ..core.roles import Roles
from ..experiments import kga as kga_experiment
from ..experiments import (llm_unlearning, people, selective_forgetting,
                           whos_harry_potter)
from ..experiments.annotate import annotate_with
from ..methods import kga, llmu, loo, whp
from .. import methods
from .. import metrics
from ..metrics import memorization_accuracy
from ..metrics.qa import generate_answers, qa_batch
from ..core.paths import results_dir
from ..core.profiles import get_profile
from ..core.record import Record


def _context_limit(model_name, profile):
    """The longest text the model and profile accept, in tokens."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(models.resolve(model_name).path)
    return min(profile.max_tokens,
               getattr(config, 'max_position_embeddings', profile.max_tokens))


def unlearn_files(args):
    """Read, check, (implant,) unlearn, measure and record; return the
    record's path."""
    profile = get_profile(args.profile)
    overrides = {'model': args.model, 'implant_lr': args.implant_lr,
                 'implant_epochs': args.implant_epochs}
    profile = get_profile(profile, **{k: v for k, v in overrides.items()
                                      if v is not None})
    # before anything loads (an empty file is refused when it is read)
    method = methods.get(args.method)
    if 'retain' in method.NEEDS and not args.retain:
        raise WorkbenchError(f'--method {args.method} needs --retain: it '
                             f'holds the model on the retain set')
    models.check_gpu_memory(profile)
    tok = models.load_tokenizer(profile.model)
    limit = _context_limit(profile.model, profile)
    rows = {'forget': data.read_jsonl(args.forget, tok, limit, 'forget file')}
    rows['retain'] = data.read_jsonl(args.retain, tok, limit, 'retain file') \
        if args.retain else []
    rows['unseen'] = data.read_jsonl(args.holdout, tok, limit,
                                     'holdout file') \
        if args.holdout else data.people('unseen', profile.n_unseen)
    progress = not args.quiet
    setup = people.setup_from_rows(profile, rows, progress=progress,
                                       do_implant=args.implant)
    f = setup.tokens['forget']
    forget_ma = memorization_accuracy(setup.model, f['input_ids'],
                                      f['attention_mask']).tolist()
    try:
        learned = people.learned_items(forget_ma, setup.thresholds['MA'])
    except WorkbenchError as e:
        if args.implant:
            raise WorkbenchError(
                f'implanting did not make the model learn the forget set '
                f'(MA {setup.implant_info["MA"]:.3f}); raise --implant-lr '
                f'or --implant-epochs') from e
        raise
    if len(learned) < len(forget_ma):
        skipped = sorted(set(range(len(forget_ma))) - set(learned))
        print(f'warning: forget lines {[i + 1 for i in skipped]} are not '
              f'known better than unseen text; left out', file=sys.stderr)
        setup.rows['forget'] = [setup.rows['forget'][i] for i in learned]
        setup.tokens['forget'] = {k: v[learned] for k, v in f.items()}
    rec = Record(f'unlearn_{args.method}', profile.name, 0, profile.model)
    before = people.measure(setup, setup.model)
    thresholds = dict(setup.thresholds)
    kw, evaluate = {}, None
    if args.method == 'seul':  # measured on its spans (S-MA, S-EL)
        masks = _span_masks(setup, args.annotator, progress)
        n = args.span_n
        before.update({f'forget/{k}': v for k, v in selective_forgetting.span_metrics(
            setup, setup.model, setup.tokens['forget'], masks['forget'],
            n).items()})
        thresholds = selective_forgetting.span_metrics(
            setup, setup.model, setup.tokens['unseen'], masks['unseen'], n)
        kw = {'span_mask': masks['forget']}
        evaluate = partial(selective_forgetting.span_quick_metrics, setup,
                           mask=masks['forget'], n=n, thresholds=thresholds)
    for k, v in before.items():
        rec.before(k, v)
    for k, v in {**setup.thresholds, **thresholds}.items():
        rec.threshold(k, v)
    config = _config(method, args, profile)
    model = people.trainable(setup)
    bound = before.get('retain/perplexity', float('inf')) * args.ppl_bound
    result = people.run_until_forgotten(
        setup, model, method, config, guard_bound=bound, progress=progress,
        evaluate=evaluate, thresholds=thresholds, **kw)
    print(f'{args.method}: {result.status} after {result.steps} steps'
          + (f' ({result.message})' if result.message else ''))
    last = people.final_metrics(result) or {}
    after = people.measure(setup, model, known=last)
    if args.method == 'seul':
        after.update({f'forget/{k}': v for k, v in selective_forgetting.span_metrics(
            setup, model, setup.tokens['forget'], masks['forget'],
            n).items()})
    for k, v in after.items():
        rec.after(k, v)
    rec.claim('forgotten', people.below_thresholds(after, thresholds)
              is not None, ', '.join(
                  f'{k} {after[f"forget/{k}"]:.3f} vs {v:.3f}'
                  for k, v in thresholds.items()))
    rec.data['run'] = {'status': result.status, 'steps': result.steps,
                       'message': result.message, 'config': asdict(config),
                       'implant': setup.implant_info}
    out = results_dir(args.out)
    if args.save_model:
        model_dir = out / f'unlearn_{args.method}_model'
        models.merged(model).save_pretrained(model_dir)
        setup.tokenizer.save_pretrained(model_dir)
        print(f'saved the unlearned model to {model_dir}')
    return rec.save(out)


def _config(method, args, profile):
    """The method's config from the command line and the profile."""
    common = {'lr': args.lr or profile.unlearn_lr,
              'steps': args.steps or profile.unlearn_steps,
              'batch_size': args.batch_size,
              'micro_batch': profile.micro_batch}
    # SeUL's selection, where the method has those fields
    common.update(spans=args.spans, selector=args.selector,
                  quantile=args.quantile)
    names = {f.name for f in fields(method.Config)}
    return method.Config(**{k: v for k, v in common.items() if k in names})


def _span_masks(setup, annotator, progress):
    """Token masks of the forget and holdout spans: a line's own "spans"
    where it has them, the two-stage annotation where it has none."""
    masks = {}
    for split in ('forget', 'unseen'):
        rows = setup.rows[split]
        missing = [r['text'] for r in rows if not r.get('spans')]
        found = {}
        if missing:
            print(f'annotating {len(missing)} {split} lines without "spans" '
                  f'({annotator})', file=sys.stderr)
            found = dict(zip(missing, annotate_with(
                missing, annotator, setup.profile, progress)['spans']))
        spans = [r.get('spans') or found[r['text']] for r in rows]
        masks[split] = metrics.span_mask(
            setup.tokenizer, [r['text'] for r in rows], spans,
            setup.tokens[split]['input_ids'].shape[1])
        if not masks[split].any():
            raise WorkbenchError(f'no sensitive span found in the {split} '
                                 f'lines: nothing for seul to unlearn or '
                                 f'measure')
    return masks


def _partition_index(rows, what):
    """The "partition" (user) of every line, as teacher indices."""
    missing = [i + 1 for i, r in enumerate(rows) if 'partition' not in r]
    if missing:
        raise WorkbenchError(f'loo needs a "partition" (the user whose data '
                             f'it is) on every line; the {what} file lacks '
                             f'it on lines {missing[:5]}')
    return [str(r['partition']) for r in rows]


def _role_metrics(roles, role, tokens):
    """Forget MA and mean NLL; retain and holdout perplexity."""
    out = {}
    with roles.active(role) as m:
        f = tokens['forget']
        stats = metrics.token_stats(m, f['input_ids'], f['attention_mask'])
        out['forget/MA'] = metrics.memorization_accuracy(
            m, f['input_ids'], stats=stats).mean().item()
        out['forget/nll'] = metrics.sequence_nll(
            m, f['input_ids'], stats=stats).mean().item()
        for split in ('retain', 'holdout'):
            t = tokens.get(split)
            if t is not None:
                out[f'{split}/perplexity'] = metrics.perplexity(
                    m, t['input_ids'], t['attention_mask'])
    return out


def unlearn_roles(args):
    """`unlearn --method loo|kga`: every model is a LoRA adapter on one
    base (`workbench.roles`), trained here (cached) from the files."""
    profile = get_profile(args.profile, **({'model': args.model}
                                           if args.model else {}))
    if not args.retain:  # before anything loads
        raise WorkbenchError(f'{args.method} needs --retain (the rest of '
                             f'the training data)')
    if args.method == 'kga' and not args.new:
        raise WorkbenchError('kga needs --new: text of the same kind, '
                             'never in the training data (D_n)')
    models.check_gpu_memory(profile)
    tok = models.load_tokenizer(profile.model)
    limit = _context_limit(profile.model, profile)
    forget = data.read_jsonl(args.forget, tok, limit, 'forget file')
    retain = data.read_jsonl(args.retain, tok, limit, 'retain file')
    if args.method == 'loo':
        users = _partition_index(forget, 'forget') + \
            _partition_index(retain, 'retain')
        names = sorted(set(users))
        if len(names) < 2:
            raise WorkbenchError('loo needs data of at least 2 partitions '
                                 '(users): one teacher each')
    else:
        new = data.read_jsonl(args.new, tok, limit, 'new-data file')
    holdout = data.read_jsonl(args.holdout, tok, limit, 'holdout file') \
        if args.holdout else data.people('unseen', profile.n_unseen)
    progress = not args.quiet
    epochs = args.implant_epochs or 4
    texts = lambda rows: [r['text'] for r in rows]  # noqa: E731
    roles = Roles(profile, progress)
    lr = args.implant_lr
    all_texts = texts(forget) + texts(retain)
    tokens = {'forget': data.tokenize(tok, texts(forget)),
              'retain': data.tokenize(tok, texts(retain)),
              'holdout': data.tokenize(tok, texts(holdout))}
    rec = Record(f'unlearn_{args.method}', profile.name, 0, profile.model)
    if args.method == 'loo':
        roles.fit('student', all_texts, epochs, lr, desc='student')
        teachers = []
        for j, name in enumerate(names):
            part = [r['text'] for r, u in zip(forget + retain, users)
                    if u == name]
            roles.fit(f'teacher{j}', part, epochs, lr,
                      desc=f'teacher {j} ({name})')
            teachers.append(f'teacher{j}')
        before = _role_metrics(roles, 'student', tokens)
        config = loo.LOOConfig(lr=args.lr or 1e-3,
                               steps=args.steps or 10)
        task = methods.Task(
            forget=tokens['forget'], roles=roles, original='student',
            teachers=teachers,
            partitions=[names.index(u) for u in users[:len(forget)]])
        result = methods.run(loo, roles.copy('student', 'unlearned'), task,
                             config, progress=progress)
        after = _role_metrics(roles, 'unlearned', tokens)
        secrets = [r for r in forget if 'prefix' in r and 'secret' in r]
        if secrets:
            for role, put in (('student', rec.before),
                              ('unlearned', rec.after)):
                with roles.active(role) as m:
                    e = metrics.exposures(m, tok, secrets)
                put('forget/exposure', sum(e) / len(e))
    else:
        roles.fit('A_D', all_texts, epochs, lr, desc='A_D')
        roles.fit('A_f', texts(forget), epochs, lr, desc='A_f')
        roles.fit('A_n', texts(new), epochs, lr, desc='A_n')
        roles.fit('A_Dr', texts(retain), epochs, lr, desc='A_Dr (retrained)')
        kga_tokens = {'forget': tokens['forget'], 'retain': tokens['retain'],
                      'new': data.tokenize(tok, texts(new)),
                      'test': tokens['holdout']}
        setup = kga_experiment.KGASetup(roles, {}, {}, kga_tokens,
                                       data.world_facts(profile.n_world))
        before = kga_experiment.measure(setup, 'A_D')
        config = kga.KGAConfig(lr=args.lr or 1e-3, steps=args.steps or 30)
        task = methods.Task(forget=tokens['forget'], retain=tokens['retain'],
                            new=kga_tokens['new'], roles=roles,
                            original='A_D')
        result = methods.run(kga, roles.copy('A_D', 'unlearned'), task,
                             config, progress=progress)
        after = kga_experiment.measure(setup, 'unlearned')
        rec.threshold('new_gap', result.gap)
    _report(rec, args, before, after, result, config, roles=roles.info)
    out = results_dir(args.out)
    if args.save_model:
        roles.model.set_adapter('unlearned')
        model_dir = out / f'unlearn_{args.method}_model'
        roles.model.save_pretrained(model_dir, selected_adapters=['unlearned'])
        tok.save_pretrained(model_dir)
        print(f'saved the unlearned adapter to {model_dir}')
    return rec.save(out)


def _pairs(rows, what):
    """Check that every line has "question" and "answer"."""
    missing = [i + 1 for i, r in enumerate(rows)
               if not str(r.get('question', '')).strip()
               or not str(r.get('answer', '')).strip()]
    if missing:
        raise WorkbenchError(f'the {what} file needs "question" and '
                             f'"answer" on every line; lines {missing[:5]} '
                             f'lack them')
    return rows


def unlearn_llmu(args, profile, tok, limit, progress):
    """`unlearn --method llmu`: forget pairs (undesired answers), normal
    pairs (--retain) for the random answers and the KL term."""
    forget = _pairs(data.read_jsonl(args.forget, tok, limit, 'forget file'),
                    'forget')
    if not args.retain:
        raise WorkbenchError('llmu needs --retain: normal question-answer '
                             'pairs for the random answers and the KL term')
    normal = _pairs(data.read_jsonl(args.retain, tok, limit, 'retain file'),
                    'retain')
    roles = Roles(profile, progress)
    if args.implant:
        roles.fit('original', [data.qa_text(r['question'], r['answer'])
                               for r in forget + normal * 2],
                  args.implant_epochs or 2, args.implant_lr,
                  desc='original (forget + normal answers)')
    else:
        roles.add('original')
    setup = llm_unlearning.HarmfulSetup(roles, {'tokens': 24}, forget, [], normal,
                                 normal, None,
                                 data.world_facts(profile.n_world))

    def numbers(role):
        with roles.active(role) as m:
            out = {'forget/answer_nll': llmu.answer_loss(m, qa_batch(
                tok, [r['question'] for r in forget],
                [r['answer'] for r in forget])).item(),
                'normal/perplexity': llm_unlearning.normal_perplexity(setup, m),
                'world_facts/accuracy': metrics.multiple_choice_accuracy(
                    m, tok, setup.world)}
        return out

    before = numbers('original')
    config = llmu.LLMUConfig(lr=args.lr or 5e-4, steps=args.steps or 60,
                             random_answers=2)
    with roles.active('original') as m:
        bound = args.ppl_bound * llm_unlearning.normal_perplexity(setup, m)
    model = roles.copy('original', 'unlearned')
    task = methods.Task(forget=None, tokenizer=tok, roles=roles,
                        original='original', forget_pairs=forget,
                        retain_pairs=normal)
    result = methods.run(llmu, model, task, config, progress=progress,
                         evaluate=lambda m: {
                             'normal/perplexity':
                                 llm_unlearning.normal_perplexity(setup, m)},
                         eval_every=5, guard_key='normal/perplexity',
                         guard_bound=bound)
    after = numbers('unlearned')
    with roles.active('unlearned') as m:
        answers = generate_answers(m, tok, [r['question'] for r in forget])
    return before, after, result, config, {'answers_after': answers}


def unlearn_whp(args, profile, tok, limit, progress):
    """`unlearn --method whp`: the forget lines are the target text,
    --anchors the anchored-terms dictionary, --prompts familiarity
    prompts (optional)."""
    paragraphs = data.read_jsonl(args.forget, tok, limit, 'forget file')
    if not args.anchors:
        raise WorkbenchError('whp needs --anchors: a JSONL of {"term": ..., '
                             '"generic": ...}, the target\'s idiosyncratic '
                             'terms and generic replacements')
    anchors = [json.loads(line) for line in
               Path(args.anchors).read_text().splitlines() if line.strip()] \
        if Path(args.anchors).is_file() else None
    if not anchors or any(not isinstance(a, dict) or 'term' not in a
                          or 'generic' not in a for a in anchors):
        raise WorkbenchError(f'{args.anchors} must be a JSONL file of '
                             f'{{"term": ..., "generic": ...}} lines')
    prompts = []
    if args.prompts:
        if not Path(args.prompts).is_file():
            raise WorkbenchError(f'prompts file {args.prompts} does not '
                                 f'exist')
        prompts = [json.loads(line) for line in Path(
            args.prompts).read_text().splitlines() if line.strip()]
        if any(not {'prompt', 'story', 'generic'} <= set(p)
               for p in prompts):
            raise WorkbenchError('each prompts line needs "prompt", "story" '
                                 'and "generic"')
    sizes = {'chapters': 0, 'epochs': args.implant_epochs or 6,
             'reinforce': 2, 'tokens': 8}
    setup = whos_harry_potter.setup_from(profile, paragraphs, anchors, prompts, sizes,
                             progress, implant=args.implant)
    before, _ = whos_harry_potter.measure(setup, 'baseline')
    config = whp.WHPConfig(**{k: v for k, v in (
        ('lr', args.lr), ('steps', args.steps)) if v}, alpha=args.alpha)
    result = whos_harry_potter.unlearn(setup, config, progress=progress)
    after, texts = whos_harry_potter.measure(setup, 'unlearned')
    return before, after, result, config, {'completions_after': texts}


def unlearn_generic(args):
    """`unlearn --method llmu|whp`: the unlearned model is a LoRA adapter
    on the profile's model (`workbench.roles`)."""
    profile = get_profile(args.profile, **({'model': args.model}
                                           if args.model else {}))
    models.check_gpu_memory(profile)
    tok = models.load_tokenizer(profile.model)
    limit = _context_limit(profile.model, profile)
    run = unlearn_llmu if args.method == 'llmu' else unlearn_whp
    before, after, result, config, extra = run(args, profile, tok, limit,
                                               not args.quiet)
    rec = Record(f'unlearn_{args.method}', profile.name, 0, profile.model)
    _report(rec, args, before, after, result, config, **extra)
    return rec.save(results_dir(args.out))


def _report(rec, args, before, after, result, config, **extra):
    """Print how the run ended; record the metrics and the run."""
    print(f'{args.method}: {result.status} after {result.steps} steps'
          + (f' ({result.message})' if result.message else ''))
    for k, v in before.items():
        rec.before(k, v)
    for k, v in after.items():
        rec.after(k, v)
    rec.data['run'] = {'status': result.status, 'steps': result.steps,
                       'message': result.message, 'config': asdict(config),
                       **extra}


# the methods whose inputs are more than forget (and retain) lines on one
# model; any other registered method runs on its files through
# `unlearn_files`
BY_INPUTS = {'loo': unlearn_roles, 'kga': unlearn_roles,
             'llmu': unlearn_generic, 'whp': unlearn_generic}


def unlearn(args):
    """Run `args.method` on the user's files; return the record's path."""
    return BY_INPUTS.get(args.method, unlearn_files)(args)
