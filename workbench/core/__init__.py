"""The core: everything the papers share, knowing none of them.

Paths and caches, run profiles, models, data, the training loop, the roles
(many models as adapters on one base), scoring (token log-probabilities,
KL), live figures and the results record. `fast/` holds what only makes
these faster (the frozen trunk, the output head by chunks, KV-cache reuse,
the heap's settings) and changes no number: a reader can skip it.
"""


class WorkbenchError(Exception):
    """An error the user can fix; the command line prints it as one line."""
