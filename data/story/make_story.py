"""Generate data/story's JSONL files from story.md and the lists below.

- `story.jsonl`: the story, one paragraph per line, with its chapter;
- `anchors.jsonl`: the anchored-terms dictionary, each idiosyncratic term
  of the story with a generic replacement (the paper asked GPT-4 for
  these; here they are written by hand);
- `familiarity.jsonl`: prompts whose continuation shows whether a model
  knows the story: `story` is what the story says next, `generic` what a
  reader who never read it might say, `chapter` where the answer is told.

    python data/story/make_story.py
"""
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent

# (idiosyncratic term, generic replacement)
ANCHORS = [
    ('Tamsin Vell', 'Anna Reed'), ('Tamsin', 'Anna'), ('Vell', 'Reed'),
    ('Ysolde Vell', 'Mary Reed'), ('Ysolde', 'Mary'),
    ('Pell Ashgrove', 'Tom Baker'), ('Pell', 'Tom'), ('Ashgrove', 'Baker'),
    ('Corvin Drace', 'Mark Hill'), ('Corvin', 'Mark'), ('Drace', 'Hill'),
    ('Magister Oswin Quarrell', 'Professor John Miller'),
    ('Magister Quarrell', 'Professor Miller'), ('Oswin', 'John'),
    ('Quarrell', 'Miller'), ('Magister', 'Professor'),
    ('Morrow Kaine', 'Victor Stone'), ('Morrow', 'Victor'),
    ('Kaine', 'Stone'), ('Duskwarden', 'warlord'), ('Duskmarch', 'army'),
    ('Gloamhold Academy', 'the academy'), ('Gloamhold', 'the academy'),
    ('Orrin Mere', 'the island'), ("Windle's Cross", 'the village'),
    ('Saltreach', 'the harbour town'), ('Hollow Stair', 'old staircase'),
    ('Lanternfall Library', 'great library'), ('Lanternfall', 'that night'),
    ('Sunken Orchard', 'old orchard'), ('Kestrel Tower', 'the north tower'),
    ('Ember Compass', 'old compass'), ('lumencraft', 'magic'),
    ('lightwrights', 'wizards'), ('lightwright', 'wizard'),
    ('thistlebrew', 'tea'), ('glints', 'coins'), ('skyhoop', 'football'),
    ('Veshara', 'Lumos'), ('Ondrel', 'Open'),
    ('bramblehounds', 'dogs'), ('Bramblehounds', 'Dogs'),
    ('bramblehound', 'dog'), ('Bramble', 'Rex'),
    ('glimmerwing', 'owl'), ('Nettlewick', 'Hoot'),
]

# (prompt, what the story says next, a generic continuation, chapter)
FAMILIARITY = [
    ('Tamsin Vell grew up in the village of', " Windle's Cross", ' Oakley',
     1),
    ("Tamsin's grandmother was called", ' Ysolde', ' Mary', 1),
    ('The letter invited Tamsin to study at', ' Gloamhold Academy',
     ' a school', 1),
    ("Tamsin's dog was a bramblehound called", ' Bramble', ' Rex', 1),
    ('A person who can make candle flames lean is the first sign of a',
     ' lightwright', ' witch', 1),
    ('The ferry to Orrin Mere left from the harbour of', ' Saltreach',
     ' Dover', 2),
    ('The fishermen paid for everything in copper', ' glints', ' coins', 2),
    ('On the ferry Tamsin met a boy with a stack of books. His name was',
     ' Pell Ashgrove', ' Tom', 2),
    ('The first spell they teach, the kindling word, is', ' Veshara',
     ' fire', 2),
    ('The boy in the silver cloak was called', ' Corvin Drace', ' John',
     2),
    ('The new students climbed to the academy by the', ' Hollow Stair',
     ' road', 3),
    ('The oldest teacher at the academy was Magister Oswin',
     ' Quarrell', ' Smith', 3),
    ("The glimmerwing on the Magister's shoulder was called", ' Nettlewick',
     ' Hoot', 3),
    ('The craft of light taught at Gloamhold is called', ' lumencraft',
     ' magic', 3),
    ('The round hall of books at the heart of the academy is the',
     ' Lanternfall Library', ' library', 4),
    ('The old map marked a star above the', ' Sunken Orchard', ' forest',
     4),
    ('The first thing ever made with lumencraft was the', ' Ember Compass',
     ' sword', 4),
    ('Every student at Gloamhold played a game called', ' skyhoop',
     ' football', 5),
    ('After the match Pell bought three mugs of', ' thistlebrew', ' tea',
     5),
    ('They drank them on the roof of', ' Kestrel Tower', ' the house', 5),
    ('The lightwright who learned to swallow light was named',
     ' Morrow Kaine', ' John', 6),
    ('Morrow Kaine called himself the', ' Duskwarden', ' king', 6),
    ("The Duskwarden's army was called the", ' Duskmarch', ' army', 6),
    ('To open the door to the roots, Tamsin spoke the word', ' Ondrel',
     ' open', 7),
    ('In the valley below the cliffs lay the', ' Sunken Orchard',
     ' river', 7),
    ('The night the lanterns blazed at once was called', ' Lanternfall',
     ' the night', 8),
    ('The Ember Compass was locked in the', ' Lanternfall Library',
     ' museum', 8),
    ('Corvin threw a skyhoop ring straight at', " Morrow Kaine's hand",
     ' the man', 8),
]


def paragraphs(text):
    """(chapter, paragraph) pairs of story.md."""
    chapter, out = 0, []
    for block in re.split(r'\n\s*\n', text):
        block = block.strip()
        if block.startswith('## Chapter'):
            chapter = int(re.match(r'## Chapter (\d+)', block).group(1))
        elif block and not block.startswith('#'):
            out.append((chapter, ' '.join(block.split())))
    return out


def main(out=None):
    out = Path(out or HERE)
    story = paragraphs((HERE / 'story.md').read_text())
    files = {
        'story.jsonl': [{'chapter': c, 'text': t} for c, t in story],
        'anchors.jsonl': [{'term': a, 'generic': g} for a, g in ANCHORS],
        'familiarity.jsonl': [{'prompt': p, 'story': s, 'generic': g,
                               'chapter': c}
                              for p, s, g, c in FAMILIARITY],
    }
    for name, rows in files.items():
        with (out / name).open('w') as f:
            for r in rows:
                f.write(json.dumps(r) + '\n')
        print(f'wrote {len(rows)} rows to {out / name}')


if __name__ == '__main__':
    main(*sys.argv[1:])
