"""One module per paper: a config dataclass and the method's core.

- `ga`: gradient ascent (Jang et al., ACL 2023)
- `seul`: span-level gradient ascent (Wang et al., AAAI 2025)
"""
from . import ga, seul

METHODS = {'ga': ga, 'seul': seul}
