"""Generate data/people/people.jsonl: fictitious people, PII spans and Q&A.

Every person is made up by Faker (seed 0; ages counted on a fixed day, so
the file does not change with the day it is regenerated). Run from anywhere:

    python data/people/make_people.py
"""
import json
import sys
import random
from datetime import date, timedelta
from pathlib import Path

from faker import Faker

SEED = 0
# ages are counted from this day, not from today, so the file stays the same
# whenever it is regenerated
AGES_ON = date(2026, 11, 24)
SPLITS = {'forget': 10, 'retain': 30, 'unseen': 20}

# Each template is a list of pieces: plain text, or `{field}` for a PII span
TEMPLATES = [
    '{name} was born on {dob} in {city}. {They} works as a {job} at {company} '
    'and can be reached at {email} or {phone}. {Their} home address is '
    '{address}.',
    '{name}, a {job} from {city}, was born on {dob}. Colleagues at {company} '
    'write to {email}; the office phone is {phone}. {They} lives at '
    '{address}.',
    'Born in {city} on {dob}, {name} joined {company} as a {job}. {Their} '
    'email is {email}, {their} phone number is {phone}, and {their} address '
    'is {address}.',
]
PII_FIELDS = ('name', 'dob', 'city', 'job', 'company', 'email', 'phone',
              'address')
PRONOUNS = {'female': ('She', 'Her', 'her'), 'male': ('He', 'His', 'his')}

QUESTIONS = [
    ('dob', 'When was {name} born?', '{name} was born on {v}.',
     'The birth date of {name} is {v}.'),
    ('email', 'What is the email address of {name}?',
     'The email address of {name} is {v}.', '{name} can be emailed at {v}.'),
    ('company', 'Where does {name} work?', '{name} works at {v}.',
     'The employer of {name} is {v}.'),
    ('city', 'In which city was {name} born?', '{name} was born in {v}.',
     'The birthplace of {name} is {v}.'),
]


def date_of_birth(fake, minimum_age, maximum_age):
    """Faker's `date_of_birth`, with ages counted on AGES_ON."""
    start = AGES_ON.replace(year=AGES_ON.year - maximum_age - 1)
    end = AGES_ON.replace(year=AGES_ON.year - minimum_age)
    dob = fake.date_time_ad(start_datetime=start, end_datetime=end).date()
    return dob if dob != start else dob + timedelta(days=1)


def person(fake, rng):
    """One fictitious person: the values of every PII field."""
    sex = rng.choice(['female', 'male'])
    name = fake.name_female() if sex == 'female' else fake.name_male()
    dob = date_of_birth(fake, minimum_age=25, maximum_age=80)
    return {
        'sex': sex, 'name': name, 'dob': dob.strftime('%B %d, %Y'),
        'city': fake.city(), 'job': fake.job().split(',')[0].lower(),
        'company': fake.company(), 'email': fake.free_email(),
        'phone': fake.numerify('###-###-####'),
        'address': fake.street_address(),
    }


def render(template, p):
    """Fill a template; return the text and the character spans of PII."""
    they, their_cap, their = PRONOUNS[p['sex']]
    values = dict(p, They=they, Their=their_cap, their=their)
    text, spans, rest = '', [], template
    while '{' in rest:
        before, rest = rest.split('{', 1)
        field, rest = rest.split('}', 1)
        text += before
        start = len(text)
        text += values[field]
        if field in PII_FIELDS:
            spans.append([start, len(text), field])
    return text + rest, spans


def qa_pairs(p, fake, rng):
    """Questions about a person, with paraphrased and perturbed answers."""
    out = []
    for field, q, a, para in QUESTIONS:
        wrong = set()
        while len(wrong) < 3:
            w = person(fake, rng)[field]
            if w != p[field]:
                wrong.add(w)
        out.append({
            'field': field,
            'question': q.format(name=p['name']),
            'answer': a.format(name=p['name'], v=p[field]),
            'paraphrased_answer': para.format(name=p['name'], v=p[field]),
            'perturbed_answers': [para.format(name=p['name'], v=w)
                                  for w in sorted(wrong)],
        })
    return out


def main(out=None):
    """Write the data set (next to this script unless `out` is given)."""
    Faker.seed(SEED)
    fake = Faker('en_US')
    rng = random.Random(SEED)
    rows, i = [], 0
    for split, count in SPLITS.items():
        for _ in range(count):
            p = person(fake, rng)
            text, spans = render(TEMPLATES[i % len(TEMPLATES)], p)
            rows.append({'id': f'p{i:03d}', 'split': split, 'name': p['name'],
                         'text': text, 'spans': spans,
                         'qa': qa_pairs(p, fake, rng)})
            i += 1
    out = Path(out or Path(__file__).with_name('people.jsonl'))
    with out.open('w') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')
    print(f'wrote {len(rows)} people to {out}')


if __name__ == '__main__':
    main(*sys.argv[1:])
