"""Run a method on a user's own JSONL files: the `unlearn` command."""
import sys

from . import WorkbenchError, data, experiment, models
from .methods import METHODS
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
    for k, v in before.items():
        rec.before(k, v)
    for k, v in setup.thresholds.items():
        rec.threshold(k, v)
    config = method.GAConfig(lr=args.lr or profile.unlearn_lr,
                             steps=args.steps or profile.unlearn_steps,
                             batch_size=args.batch_size)
    model = experiment.trainable(setup)
    bound = before.get('retain/perplexity', float('inf')) * args.ppl_bound
    result = method.unlearn(
        model, setup.tokens['forget'], config,
        evaluate=lambda m: experiment.quick_metrics(setup, m),
        should_stop=lambda m: experiment.below_thresholds(
            m, setup.thresholds, setup.el_key),
        guard_bound=bound, progress=progress)
    print(f'{args.method}: {result.status} after {result.steps} steps'
          + (f' ({result.message})' if result.message else ''))
    after = experiment.measure(setup, model)
    for k, v in after.items():
        rec.after(k, v)
    el = f'forget/{setup.el_key}'
    rec.claim('forgotten', experiment.below_thresholds(
        after, setup.thresholds, setup.el_key) is not None,
        f'{el} {after[el]:.3f} vs {setup.thresholds[setup.el_key]:.3f}, MA '
        f'{after["forget/MA"]:.3f} vs {setup.thresholds["MA"]:.3f}')
    rec.data['run'] = {'status': result.status, 'steps': result.steps,
                       'message': result.message,
                       'implant': setup.implant_info}
    out = results_dir(args.out)
    if args.save_model:
        model_dir = out / f'unlearn_{args.method}_model'
        models.merged(model).save_pretrained(model_dir)
        setup.tokenizer.save_pretrained(model_dir)
        print(f'saved the unlearned model to {model_dir}')
    return rec.save(out)
