"""One module per notebook, named as the notebook: its set-up (the model
that knows what must be forgotten, the data it is measured on), its
measurements, and what it runs. `people` is the implanted-people set-up
that the tour, 03 and 07 share, and `annotate` the two-stage span
annotation of 07 and the command line's `seul`.

| notebook | module |
| --- | --- |
| 00_tour, 03_knowledge_unlearning | `people`, `knowledge_unlearning` |
| 01_fairsisa | `fairsisa` |
| 02_loo_ensemble | `loo_ensemble` |
| 04_kga | `kga` |
| 05_llm_unlearning | `llm_unlearning` |
| 06_whos_harry_potter | `whos_harry_potter` |
| 07_selective_forgetting | `selective_forgetting` |
| 08_comparison | `comparison` |
"""
