"""Generate data/letters/letters.jsonl: a letter by or about each person of
data/people, in ordinary prose around a few of the person's details.

Notebook 07 unlearns these. A bio (data/people) is about two thirds
personal details; a letter is mostly everyday language, with the
sensitive spans (name, email, phone, address, date of birth) a small
share of it, as in the e-mails and documents the paper unlearns. Each
letter's spans are stored with it, as character offsets. Nothing is
random: the letters follow the people's order through the templates.
Run from anywhere:

    python data/letters/make_letters.py
"""
import json
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEOPLE = HERE.parent / 'people' / 'people.jsonl'

# ordinary prose with `{field}` where a person's detail goes
TEMPLATES = [
    'Dear neighbours, the residents\' meeting about the new bicycle racks '
    'will take place next Tuesday at seven in the community hall. We will '
    'also talk about the spring clean-up and the broken light by the car '
    'park. Tea and biscuits will be served. If you cannot come but would '
    'like to share your views, please write to {name} at {email} or call '
    '{phone}. Kind regards, the residents\' committee.',
    'Hello everyone, thank you for a wonderful season at the choir. '
    'Rehearsals start again in September, on Wednesday evenings as before, '
    'and new singers are always welcome, whether or not they read music. '
    'Sheet music can be collected from {name}, who lives at {address}. For '
    'questions about the autumn concert, ring {phone}.',
    'Hi there, just a quick note to say the parcel arrived this morning, '
    'slightly damp from the rain but otherwise in good shape. The blue cups '
    'are lovely and the plates will go nicely with the old table. I have '
    'sent the payment to the account you gave me. If anything goes wrong, '
    'my number is {phone}, and you can still find me at {address}. Best '
    'wishes, {name}',
    'To whom it may concern, I am glad to recommend {name}, born on {dob}, '
    'who helped at our library every Saturday for two years. Our young '
    'readers looked forward to the story hour, the returns were always in '
    'order, and nothing was too much trouble. I would happily answer any '
    'further questions by email at {email}.',
    'Good morning, a reminder that the office will be closed on Friday for '
    'the yearly service of the heating system. Please take your laptops '
    'home on Thursday evening and leave your desks clear. Deliveries '
    'expected that day should be sent to {name} at {address} instead, and '
    'anything urgent can go to {email}.',
    'Dear parents, the school trip to the science museum is planned for '
    'the second week of May. Children should bring a packed lunch, a warm '
    'coat and a small notebook for their drawings. The coach leaves at half '
    'past eight and returns by four. Signed forms can be handed to {name}, '
    'whose phone number is {phone}.',
    'Hi both, we had a great time at the lake last weekend, even if the '
    'weather turned at the end. The photographs are finally sorted, and I '
    'will print the best ones for the album. Next time we should book the '
    'cabin earlier, as the prices go up in summer. Write to me at {email} '
    'or drop by {address} whenever you like. Love, {name}',
    'Dear customer, your order has been packed and will be delivered '
    'within three working days. Please make sure someone can sign for it, '
    'as the courier cannot leave large items outside. The delivery will go '
    'to {address}, and the driver will call {phone} about an hour before '
    'arrival. Thank you for shopping with us. Order for {name}, born {dob}.',
]


def detail(person, field):
    """A detail's text as the bio states it."""
    for s, e, f in person['spans']:
        if f == field:
            return person['text'][s:e]
    raise KeyError(f'{person["id"]} has no {field}')


def letter(template, person):
    """The letter's text and its spans [start, end, field]."""
    text, spans, pos = '', [], 0
    for m in re.finditer(r'\{(\w+)\}', template):
        text += template[pos:m.start()]
        value = detail(person, m.group(1))
        spans.append([len(text), len(text) + len(value), m.group(1)])
        text += value
        pos = m.end()
    return text + template[pos:], spans


def main(out=HERE / 'letters.jsonl'):
    people = [json.loads(line) for line in PEOPLE.read_text().splitlines()]
    with Path(out).open('w') as f:
        for i, p in enumerate(people):
            text, spans = letter(TEMPLATES[i % len(TEMPLATES)], p)
            f.write(json.dumps({'id': p['id'], 'split': p['split'],
                                'name': p['name'], 'text': text,
                                'spans': spans}) + '\n')
    print(f'{len(people)} letters in {out}')


if __name__ == '__main__':
    main()
