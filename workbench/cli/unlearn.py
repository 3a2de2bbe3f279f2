"""Run a method on a user's own JSONL files: the `unlearn` command."""
import sys
from dataclasses import asdict, fields
from functools import partial

from transformers import AutoConfig

from ..core import WorkbenchError, data, models

from ..core.roles import Roles
from ..experiments import kga as kga_experiment
from ..experiments import (llm_unlearning, people, selective_forgetting,
                           whos_harry_potter)
from ..experiments.annotate import annotate_with
from ..methods import kga, llmu, loo, whp
from .. import methods
from .. import metrics
from . import inputs
from ..metrics import memorization_accuracy
from ..metrics.qa import generate_answers, qa_batch
from ..core.paths import results_dir
from ..core.profiles import get_profile
from ..core.record import Record


def _tokenizer(args, files, profile):
    """The profile's tokenizer, once the GPU is checked, and every line
    checked against the longest text the model and profile accept."""
    models.check_gpu_memory(profile)
    tok = models.load_tokenizer(profile.model)
    config = AutoConfig.from_pretrained(models.resolve(profile.model).path)
    limit = min(profile.max_tokens, getattr(
        config, 'max_position_embeddings', profile.max_tokens))
    inputs.check_lengths(args.method, files, tok, limit)
    return tok


def _threshold_source(args, files):
    """Where the forgetting thresholds come from: ('unseen' or 'forget',
    the record's words). Warns in one line when they come from another kind
    of text than the user's."""
    if files.get('holdout'):
        return 'unseen', 'the --holdout file: never-trained text'
    if args.implant:
        return 'forget', ('the forget file measured before the implant: '
                          'the unseen level of exactly that text')
    print('warning: no --holdout and no --implant: the forgetting '
          'thresholds come from the shipped unseen people, another kind of '
          'text than yours; give --holdout with never-trained text like '
          'your forget file', file=sys.stderr)
    return 'unseen', ("the shipped unseen people's bios: another kind of "
                      "text than the forget file")


def unlearn_files(args, files):
    """(Implant,) unlearn, measure and record on the lines read from the
    user's `files`; return the record's path."""
    profile = get_profile(args.profile)
    overrides = {'model': args.model, 'implant_lr': args.implant_lr,
                 'implant_epochs': args.implant_epochs}
    profile = get_profile(profile, **{k: v for k, v in overrides.items()
                                      if v is not None})
    method = methods.get(args.method)
    _tokenizer(args, files, profile)  # every line checked against it
    rows = {'forget': files['forget'], 'retain': files.get('retain', []),
            'unseen': files.get('holdout')
            or data.people('unseen', profile.n_unseen)}
    progress = not args.quiet
    reference, source = _threshold_source(args, files)
    setup = people.setup_from_rows(profile, rows, progress=progress,
                                   do_implant=args.implant,
                                   reference=reference)
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
    rec = Record(f'unlearn_{args.method}', profile, 0, profile.model)
    rec.data['thresholds_from'] = source
    before = people.measure(setup, setup.model)
    thresholds = dict(setup.thresholds)
    kw, evaluate = {}, None
    if args.method == 'seul':  # measured on its spans (S-MA, S-EL)
        masks = _span_masks(setup, args.annotator, progress)
        n = args.span_n
        spans = selective_forgetting.span_metrics(
            setup, setup.model, setup.tokens['forget'], masks['forget'], n)
        before.update({f'forget/{k}': v for k, v in spans.items()})
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
        spans = selective_forgetting.span_metrics(
            setup, model, setup.tokens['forget'], masks['forget'], n)
        after.update({f'forget/{k}': v for k, v in spans.items()})
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


def unlearn_roles(args, files):
    """`unlearn --method loo|kga`: every model is a LoRA adapter on one
    base (`workbench.core.roles`), trained here (cached) from the files."""
    profile = get_profile(args.profile, **({'model': args.model}
                                           if args.model else {}))
    tok = _tokenizer(args, files, profile)
    forget, retain = files['forget'], files['retain']
    if args.method == 'loo':
        users = [str(r['partition']) for r in forget + retain]
        names = sorted(set(users))
    else:
        new = files['new']
    holdout = files.get('holdout') or data.people('unseen',
                                                  profile.n_unseen)
    progress = not args.quiet
    epochs = args.implant_epochs or 4
    texts = lambda rows: [r['text'] for r in rows]  # noqa: E731
    roles = Roles(profile, progress)
    lr = args.implant_lr
    all_texts = texts(forget) + texts(retain)
    tokens = {'forget': data.tokenize(tok, texts(forget)),
              'retain': data.tokenize(tok, texts(retain)),
              'holdout': data.tokenize(tok, texts(holdout))}
    rec = Record(f'unlearn_{args.method}', profile, 0, profile.model)
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


def unlearn_llmu(args, files, profile, tok, progress):
    """`unlearn --method llmu`: forget pairs (undesired answers), normal
    pairs (--retain) for the random answers and the KL term."""
    forget, normal = files['forget'], files['retain']
    roles = Roles(profile, progress)
    if args.implant:
        roles.fit('original', [data.qa_text(r['question'], r['answer'])
                               for r in forget + normal * 2],
                  args.implant_epochs or 2, args.implant_lr,
                  desc='original (forget + normal answers)')
    else:
        roles.add('original')
    setup = llm_unlearning.HarmfulSetup(roles, {'tokens': 24}, forget, [],
                                        normal, normal, None,
                                        data.world_facts(profile.n_world))

    def numbers(role):
        with roles.active(role) as m:
            out = {'forget/answer_nll': llmu.answer_loss(m, qa_batch(
                tok, [r['question'] for r in forget],
                [r['answer'] for r in forget])).item(),
                'normal/perplexity': llm_unlearning.normal_perplexity(setup,
                                                                      m),
                **metrics.world_facts_metrics(m, tok, setup.world)}
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


def unlearn_whp(args, files, profile, tok, progress):
    """`unlearn --method whp`: the forget lines are the target text,
    --anchors the anchored-terms dictionary, --prompts familiarity
    prompts (optional)."""
    paragraphs, anchors = files['forget'], files['anchors']
    prompts = files.get('prompts', [])
    sizes = {'chapters': 0, 'epochs': args.implant_epochs or 6,
             'reinforce': 2, 'tokens': 8}
    setup = whos_harry_potter.setup_from(profile, paragraphs, anchors,
                                         prompts, sizes, progress,
                                         implant=args.implant)
    before, _ = whos_harry_potter.measure(setup, 'baseline')
    config = whp.WHPConfig(**{k: v for k, v in (
        ('lr', args.lr), ('steps', args.steps)) if v}, alpha=args.alpha)
    result = whos_harry_potter.unlearn(setup, config, progress=progress)
    after, texts = whos_harry_potter.measure(setup, 'unlearned')
    return before, after, result, config, {'completions_after': texts}


def unlearn_generic(args, files):
    """`unlearn --method llmu|whp`: the unlearned model is a LoRA adapter
    on the profile's model (`workbench.core.roles`)."""
    profile = get_profile(args.profile, **({'model': args.model}
                                           if args.model else {}))
    tok = _tokenizer(args, files, profile)
    run = unlearn_llmu if args.method == 'llmu' else unlearn_whp
    before, after, result, config, extra = run(args, files, profile, tok,
                                               not args.quiet)
    rec = Record(f'unlearn_{args.method}', profile, 0, profile.model)
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
    """Check every input, then run `args.method` on the user's files;
    return the record's path."""
    files = inputs.read_inputs(args)
    return BY_INPUTS.get(args.method, unlearn_files)(args, files)
