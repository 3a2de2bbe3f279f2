"""One module per paper: a config dataclass and the method's core.

- `ga`: gradient ascent (Jang et al., ACL 2023)
- `seul`: span-level gradient ascent (Wang et al., AAAI 2025)
- `fairsisa`: equalized-odds post-processing of a SISA ensemble (Kadhe et
  al., 2023)
- `loo`: leave-one-out ensemble distillation (Liu and Kalinli, ICASSP 2024)
- `kga`: knowledge gap alignment (Wang et al., ACL 2023)
- `llmu`: gradient ascent + random mismatch + KL (Yao et al., NeurIPS 2024)
- `whp`: fine-tuning on generic labels (Eldan and Russinovich, 2023)
- `graddiff`: ascent on the forget set, descent on the retain set (TOFU's
  baseline)
- `npo`: negative preference optimisation (Zhang et al., COLM 2024)

`METHODS` holds those that unlearn a single model's forget set in place
(the `unlearn` command's `ga`, `seul`, `graddiff` and `npo`; the last two,
`RETAIN_METHODS`, also train on the retain set); `loo`, `kga`, `llmu` and
`whp` work on several models held as adapters by `workbench.roles`.
"""
from . import ga, graddiff, npo, seul

METHODS = {'ga': ga, 'seul': seul, 'graddiff': graddiff, 'npo': npo}
RETAIN_METHODS = ('graddiff', 'npo')
