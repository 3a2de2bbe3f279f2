"""Run a method on a user's own JSONL files: the `unlearn` command."""
import sys
from dataclasses import asdict
from functools import partial

from . import WorkbenchError, data, experiment, models
from .methods import METHODS
from . import metrics
from .metrics import memorization_accuracy
from .paths import results_dir
from .profiles import get_profile
from .record import Record


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
    setup = experiment.setup_from_rows(profile, rows, progress=progress,
                                       do_implant=args.implant)
    method = METHODS[args.method]
    f = setup.tokens['forget']
    forget_ma = memorization_accuracy(setup.model, f['input_ids'],
                                      f['attention_mask']).tolist()
    try:
        learned = method.check_learned(forget_ma, setup.thresholds['MA'])
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
    before = experiment.measure(setup, setup.model)
    thresholds = dict(setup.thresholds)
    kw, evaluate = {}, None
    if args.method == 'seul':
        masks = _span_masks(setup, args.annotator, progress)
        n = args.span_n
        before.update({f'forget/{k}': v for k, v in experiment.span_metrics(
            setup, setup.model, setup.tokens['forget'], masks['forget'],
            n).items()})
        thresholds = experiment.span_metrics(
            setup, setup.model, setup.tokens['unseen'], masks['unseen'], n)
        kw = {'span_mask': masks['forget']}
        evaluate = partial(experiment.span_quick_metrics, setup,
                           mask=masks['forget'], n=n)
    for k, v in before.items():
        rec.before(k, v)
    for k, v in {**setup.thresholds, **thresholds}.items():
        rec.threshold(k, v)
    config = _config(method, args, profile)
    model = experiment.trainable(setup)
    bound = before.get('retain/perplexity', float('inf')) * args.ppl_bound
    result = experiment.run_until_forgotten(
        setup, model, method, config, guard_bound=bound, progress=progress,
        evaluate=evaluate, thresholds=thresholds, **kw)
    print(f'{args.method}: {result.status} after {result.steps} steps'
          + (f' ({result.message})' if result.message else ''))
    last = experiment.final_metrics(result) or {}
    after = experiment.measure(setup, model, known=last)
    if args.method == 'seul':
        after.update({f'forget/{k}': v for k, v in experiment.span_metrics(
            setup, model, setup.tokens['forget'], masks['forget'],
            n).items()})
    for k, v in after.items():
        rec.after(k, v)
    rec.claim('forgotten', experiment.below_thresholds(after, thresholds)
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
              'batch_size': args.batch_size}
    if method.__name__.endswith('seul'):
        common.update(spans=args.spans, selector=args.selector,
                      quantile=args.quantile)
    return method.Config(**common)


def _span_masks(setup, annotator, progress):
    """Token masks of the forget and holdout spans: a line's own "spans"
    where it has them, the two-stage annotation where it has none."""
    from .annotate import annotate
    masks = {}
    for split in ('forget', 'unseen'):
        rows = setup.rows[split]
        missing = [r['text'] for r in rows if not r.get('spans')]
        found = {}
        if missing:
            print(f'annotating {len(missing)} {split} lines without "spans" '
                  f'({annotator})', file=sys.stderr)
            model = tok = None
            if annotator != 'rules':
                model, tok = models.load_causal_lm(annotator, setup.profile)
            found = dict(zip(missing, annotate(
                missing, model, tok, annotator, progress=progress)['spans']))
        spans = [r.get('spans') or found[r['text']] for r in rows]
        masks[split] = metrics.span_mask(
            setup.tokenizer, [r['text'] for r in rows], spans,
            setup.tokens[split]['input_ids'].shape[1])
        if not masks[split].any():
            raise WorkbenchError(f'no sensitive span found in the {split} '
                                 f'lines: nothing for seul to unlearn or '
                                 f'measure')
    return masks
