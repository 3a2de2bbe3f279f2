"""The methods, one module each: a config dataclass and the paper's core.

Language-model methods, each in `REGISTRY` under its name, all run by
`run` through the one training loop (`base` holds the interface):

- `ga`: gradient ascent (Jang et al., ACL 2023)
- `seul`: span-level gradient ascent (Wang et al., AAAI 2025)
- `graddiff`: ascent on the forget set, descent on the retain set (TOFU's
  baseline)
- `npo`: negative preference optimisation (Zhang et al., COLM 2024)
- `simnpo`: NPO without a reference model, length-normalised (Fan et al.,
  2024)
- `rmu`: representation misdirection, on one layer's hidden states (Li et
  al., ICML 2024, the WMDP paper)
- `loo`: leave-one-out ensemble distillation (Liu and Kalinli, ICASSP 2024)
- `kga`: knowledge gap alignment (Wang et al., ACL 2023)
- `llmu`: gradient ascent + random mismatch + KL (Yao et al., NeurIPS 2024)
- `whp`: fine-tuning on generic labels (Eldan and Russinovich, 2023)

SISA (`sisa`) and its fair ensembles (`fairsisa`, Kadhe et al., 2023)
train classifiers by their own procedure.

Adding a method is one module here that defines what `base` lists (and
its tests): the registry finds it, and the comparison, the command line
and the benchmarks loop over the registry.
"""
import importlib
import pkgutil

from ..core import WorkbenchError
from . import base
from .base import Plan, Task


def _discover():
    """Every module of this package that defines a method's interface,
    in the order of their `ORDER`."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == 'base':
            continue
        module = importlib.import_module(f'{__name__}.{info.name}')
        if hasattr(module, 'plan') and hasattr(module, 'NAME'):
            found.append(module)
    return {m.NAME: m for m in sorted(found, key=lambda m: m.ORDER)}


REGISTRY = _discover()


def get(method):
    """The method's module, from its name (or the module itself)."""
    if not isinstance(method, str):
        return method
    if method not in REGISTRY:
        raise WorkbenchError(f'unknown method {method!r}; choose one of '
                             f'{", ".join(REGISTRY)}')
    return REGISTRY[method]


def run(method, model, task, config, **kwargs):
    """`base.run` of the method named `method` (or given as its module)."""
    return base.run(get(method), model, task, config, **kwargs)


__all__ = ['REGISTRY', 'Plan', 'Task', 'get', 'run']
