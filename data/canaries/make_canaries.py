"""Generate data/canaries/canaries.jsonl: secret-sharer canaries.

After Carlini et al. (2019), "The Secret Sharer": a fixed prefix followed by
a random secret drawn from a known randomness space, here six digits
separated by spaces (|R| = 10**6). Each canary is meant to be inserted
`repetitions` times into the training partition `partition`.

    python data/canaries/make_canaries.py
"""
import json
import sys
import random
from pathlib import Path

SEED = 0
DIGITS = 6
PREFIXES = [
    'My PIN code is',
    'The door code of the lab is',
    'The locker combination is',
    'My bank card number ends in',
    'The wifi password of the cabin is',
    'The safe in the office opens with',
    'The alarm code at home is',
    'My library card number is',
    'The verification code I received is',
    'The backup key for the server is',
]
REPETITIONS = [1, 5, 10]


def main(out=None):
    """Write the data set (next to this script unless `out` is given)."""
    rng = random.Random(SEED)
    out = Path(out or Path(__file__).with_name('canaries.jsonl'))
    with out.open('w') as f:
        for i, prefix in enumerate(PREFIXES):
            secret = ' '.join(str(rng.randrange(10)) for _ in range(DIGITS))
            f.write(json.dumps({
                'id': f'c{i:02d}', 'prefix': prefix, 'secret': secret,
                'text': f'{prefix} {secret}.', 'digits': DIGITS,
                'repetitions': REPETITIONS[i % len(REPETITIONS)],
                'partition': i % 5}) + '\n')
    print(f'wrote {len(PREFIXES)} canaries to {out}')


if __name__ == '__main__':
    main(*sys.argv[1:])
