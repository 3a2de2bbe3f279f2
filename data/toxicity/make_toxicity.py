"""Generate data/toxicity/toxicity.jsonl: identity-term template sentences.

Built the way Dixon et al. (2018), "Measuring and Mitigating Unintended Bias
in Text Classification", built their bias test set: sentence templates filled
with identity terms and with toxic or non-toxic words, so that the label
depends only on the words and never on the identity.

Two distributions, as in the paper's setting:
- `train` is skewed the way real comment data is: texts that mention some
  identity topics (sexual orientation, religion) are far more often toxic
  than others, and carry more label noise (annotators disagree more about
  them). A classifier can learn the identity term as a shortcut.
- `val` and `test` are Dixon's balanced evaluation: every identity term
  appears equally often with toxic and non-toxic words, so any difference in
  error rates between groups is unintended bias. `val` fits the fairness
  post-processing, `test` reports.

    python data/toxicity/make_toxicity.py
"""
import json
import random
import sys
from pathlib import Path

SEED = 0
SIZES = {'train': 4000, 'val': 1200, 'test': 1600}

IDENTITIES = {
    'sexual_orientation': ['gay', 'lesbian', 'bisexual', 'queer',
                           'homosexual', 'straight', 'heterosexual'],
    'religion': ['muslim', 'jewish', 'christian', 'buddhist', 'catholic',
                 'sikh', 'hindu'],
    'race': ['black', 'white', 'african', 'asian', 'hispanic', 'latino',
             'european'],
    'gender': ['transgender', 'nonbinary', 'male', 'female'],
    'age': ['old', 'young', 'elderly', 'teenage', 'middle aged'],
    'disability': ['blind', 'deaf', 'disabled'],
}

# P(toxic | topic) in train: the shortcut a classifier can learn. 'none'
# is text that mentions no identity at all.
TRAIN_TOXIC_RATE = {'sexual_orientation': 0.7, 'religion': 0.6, 'race': 0.4,
                    'gender': 0.4, 'age': 0.25, 'disability': 0.25,
                    'none': 0.2}
# share of train texts mentioning each topic (the rest mention none)
TRAIN_TOPIC_SHARE = {'sexual_orientation': 0.08, 'religion': 0.08,
                     'race': 0.12, 'gender': 0.06, 'age': 0.06,
                     'disability': 0.04}
# label noise in train: flipped labels, more often on identity content
TRAIN_NOISE = {'sexual_orientation': 0.12, 'religion': 0.1}
DEFAULT_NOISE = 0.04

TOXIC = ['disgusting', 'stupid', 'worthless', 'pathetic', 'filthy',
         'ignorant', 'idiotic', 'vile', 'dumb', 'repulsive', 'ridiculous',
         'useless', 'awful', 'nasty', 'lazy', 'horrible']
NICE = ['wonderful', 'kind', 'smart', 'friendly', 'thoughtful', 'lovely',
        'brilliant', 'generous', 'fun', 'honest', 'helpful', 'great',
        'funny', 'caring', 'fantastic', 'talented']

# words whose toxicity is in the eye of the annotator: in train, texts that
# mention an identity topic with a high TRAIN_TOXIC_RATE are labelled toxic
# far more often (the annotation bias of real comment data); in val and test
# half of them are toxic in every group
AMBIGUOUS = ['weird', 'loud', 'different', 'strange', 'intense', 'odd',
             'emotional', 'unusual']
AMBIGUOUS_SHARE = 0.2
AMBIGUOUS_TRAIN_RATE = {'sexual_orientation': 0.8, 'religion': 0.75}
AMBIGUOUS_DEFAULT_RATE = 0.2

# {who}: identity phrase, {adj}: the word that decides the label
TEMPLATES = [
    '{who} people are {adj}.',
    'Being {who} is {adj}.',
    'You are a {adj} {who} person.',
    'My neighbour is {who} and honestly {adj}.',
    'Every {who} person I have met was {adj}.',
    'I think {who} people are pretty {adj}.',
    'Those {who} folks at the meeting were {adj}.',
    'Honestly, {who} people can be so {adj}.',
    'The {who} guy who answered was {adj}.',
    'What a {adj} thing for a {who} person to say.',
    'Reading this, {who} people sound {adj}.',
    'My {who} coworker is {adj}.',
]
# the same sentences with no identity term
PLAIN = [
    'People like that are {adj}.',
    'This comment is {adj}.',
    'You are a {adj} person.',
    'My neighbour is honestly {adj}.',
    'Everyone I met there was {adj}.',
    'I think these people are pretty {adj}.',
    'The folks at the meeting were {adj}.',
    'Honestly, people can be so {adj}.',
    'The guy who answered was {adj}.',
    'What a {adj} thing to say.',
    'Reading this, the author sounds {adj}.',
    'My coworker is {adj}.',
]


# harder cases, where the words alone mislead: a negated word flips the
# label, and counter-speech quotes an insult without insulting anyone
NEGATED = [
    '{who} people are not {adj}.',
    'My {who} coworker is not {adj} at all.',
    'No, {who} people are not {adj}.',
]
PLAIN_NEGATED = [
    'People like that are not {adj}.',
    'My coworker is not {adj} at all.',
    'No, these people are not {adj}.',
]
COUNTER = [
    'Calling {who} people {adj} is wrong.',
    'Stop saying that {who} people are {adj}.',
    'It is unfair to claim that {who} people are {adj}.',
]
PLAIN_COUNTER = [
    'Calling people {adj} is wrong.',
    'Stop saying that people are {adj}.',
    'It is unfair to claim that others are {adj}.',
]
HARD_SHARE = 0.35  # share of texts built from the harder templates


def sentence(rng, topic, toxic):
    """(text, identity term of `topic` or '', ambiguous?).

    An ambiguous text carries a word from AMBIGUOUS: its label is drawn by
    the caller. Plain templates take a toxic word exactly when the text is toxic;
    negated ones take the opposite word; counter-speech is always
    non-toxic and quotes a toxic word.
    """
    plain = topic == 'none'
    kind = 'plain'
    if rng.random() < AMBIGUOUS_SHARE:
        adj = rng.choice(AMBIGUOUS)
        who = '' if plain else rng.choice(IDENTITIES[topic])
        text = rng.choice(PLAIN if plain else TEMPLATES).format(
            who=who, adj=adj)
        return text[0].upper() + text[1:], who, True
    if rng.random() < HARD_SHARE:
        kind = 'negated' if toxic or rng.random() < 0.5 else 'counter'
    if kind == 'plain':
        templates, word = (PLAIN if plain else TEMPLATES), toxic
    elif kind == 'negated':
        templates, word = (PLAIN_NEGATED if plain else NEGATED), not toxic
    else:
        templates, word = (PLAIN_COUNTER if plain else COUNTER), True
    adj = rng.choice(TOXIC if word else NICE)
    who = '' if plain else rng.choice(IDENTITIES[topic])
    text = rng.choice(templates).format(who=who, adj=adj)
    return text[0].upper() + text[1:], who, False


def train_rows(rng, n):
    """Skewed rows: topic shares, toxic rates and label noise of train."""
    topics = list(TRAIN_TOPIC_SHARE) + ['none']
    weights = list(TRAIN_TOPIC_SHARE.values())
    weights.append(1 - sum(weights))
    for _ in range(n):
        topic = rng.choices(topics, weights)[0]
        toxic = rng.random() < TRAIN_TOXIC_RATE[topic]
        text, who, ambiguous = sentence(rng, topic, toxic)
        if ambiguous:
            toxic = rng.random() < AMBIGUOUS_TRAIN_RATE.get(
                topic, AMBIGUOUS_DEFAULT_RATE)
        noisy = rng.random() < TRAIN_NOISE.get(topic, DEFAULT_NOISE)
        yield text, who, topic, int(toxic) ^ int(noisy)


def balanced_rows(rng, n):
    """Dixon's evaluation: each topic equally often, half of it toxic."""
    topics = list(IDENTITIES)
    for i in range(n):
        topic = topics[i % len(topics)]
        toxic = (i // len(topics)) % 2 == 1
        text, who, _ = sentence(rng, topic, toxic)
        yield text, who, topic, int(toxic)


def main(out=None):
    """Write the data set (next to this script unless `out` is given)."""
    rng = random.Random(SEED)
    out = Path(out or Path(__file__).with_name('toxicity.jsonl'))
    n = 0
    with out.open('w') as f:
        for split, size in SIZES.items():
            rows = (train_rows if split == 'train' else balanced_rows)(
                rng, size)
            for text, who, topic, label in rows:
                f.write(json.dumps({
                    'id': f't{n:05d}', 'split': split, 'text': text,
                    'label': label, 'topic': topic, 'identity': who}) + '\n')
                n += 1
    print(f'wrote {n} rows to {out}')


if __name__ == '__main__':
    main(*sys.argv[1:])
