"""One module per paper: a config dataclass and the method's core.

- `ga`: gradient ascent (Jang et al., ACL 2023)
"""
from . import ga

METHODS = {'ga': ga}
