"""Synthetic SQuAD-style records about made-up people and cities, for tests and examples:
deterministic for a seed, every answer a span of its context, some contexts long enough
for several windows. Demo code: not part of the installed packages."""
from __future__ import annotations

import random

_FIRST = ["Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
          "Keiko", "Lars", "Marta", "Nikolai", "Olga", "Pavel", "Rosa", "Sven", "Tomas", "Vera"]
_LAST = ["Smith", "Okafor", "Lindqvist", "Moreau", "Novak", "Tanaka", "Duarte", "Keller", "Brennan", "Varga",
         "Holm", "Castillo", "Weber", "Ferreira", "Kowalski"]
_CITIES = ["Lisbon", "Oslo", "Krakow", "Porto", "Ghent", "Tallinn", "Bergen", "Turin", "Leipzig", "Graz",
           "Malmo", "Utrecht", "Seville", "Bilbao", "Riga"]
_JOBS = ["baker", "architect", "sailor", "teacher", "painter", "chemist", "carpenter", "journalist",
         "surgeon", "librarian"]
_INSTRUMENTS = ["violin", "cello", "piano", "flute", "trumpet", "harp", "clarinet", "guitar"]
# (fact sentence, question, answer slot): the answer is the text filled into that slot
_FACTS = [
    ("{name} was born in {city} in {year}.", "Where was {name} born?", "city"),
    ("{name} was born in {city} in {year}.", "In which year was {name} born?", "year"),
    ("For many years {name} worked as a {job} near the harbour.", "What did {name} work as?", "job"),
    ("In the evenings {name} liked to play the {instrument} for friends.", "Which instrument did {name} play?",
     "instrument"),
]
_FILLERS = [
    "The old market in {city} opens early on Saturdays.",
    "A narrow river runs through {city} and floods almost every spring.",
    "Visitors to {city} often praise its quiet gardens and small museums.",
    "The winters in {city} were long, grey and surprisingly windy.",
    "Most of the houses near the square in {city} were rebuilt after a fire.",
    "Trains from {city} leave for the coast twice a day.",
    "The local newspaper of {city} printed its first issue in {year}.",
    "Many families in {city} kept goats and grew potatoes behind their houses.",
]


def synthetic_squad(n: int, seed: int = 0) -> list[dict]:
    """``n`` deterministic synthetic QA records (flat layout) about made-up people and cities.

    Even-numbered records have long contexts (about 150-300 words, several windows at
    max_length 64); odd ones are short. Distractor sentences mention other people.
    """
    rng = random.Random(seed)
    people = [f"{f} {l}" for f in _FIRST for l in _LAST]
    out = []
    for i in range(n):
        chosen = rng.sample(people, 6)
        target, others = chosen[0], chosen[1:]
        fact, question, slot = _FACTS[rng.randrange(len(_FACTS))]
        values = {"name": target, "city": rng.choice(_CITIES), "year": str(rng.randint(1850, 1999)),
                  "job": rng.choice(_JOBS), "instrument": rng.choice(_INSTRUMENTS)}
        sentences: list[str] = []
        n_fill = rng.randint(16, 26) if i % 2 == 0 else rng.randint(2, 4)
        for _ in range(n_fill):
            if rng.random() < 0.4:  # a distractor fact about someone else
                other_fact = _FACTS[rng.randrange(len(_FACTS))][0]
                sentences.append(other_fact.format(name=rng.choice(others), city=rng.choice(_CITIES),
                                                   year=rng.randint(1850, 1999), job=rng.choice(_JOBS),
                                                   instrument=rng.choice(_INSTRUMENTS)))
            else:
                sentences.append(rng.choice(_FILLERS).format(city=rng.choice(_CITIES), year=rng.randint(1850, 1999)))
        at = rng.randint(0, len(sentences))
        prefix = " ".join(sentences[:at])
        prefix = prefix + " " if prefix else ""
        head, tail = fact.split("{" + slot + "}")
        head = head.format(**values)
        answer = values[slot]
        answer_sentence = head + answer + tail.format(**values)
        rest = " ".join(sentences[at:])
        context = prefix + answer_sentence + (" " + rest if rest else "")
        out.append({"id": f"synthetic-{seed}-{i}", "question": question.format(**values), "context": context,
                    "answers": {"text": [answer], "answer_start": [len(prefix) + len(head)]}})
    return out
