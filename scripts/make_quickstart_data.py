#!/usr/bin/env python3
"""Generates recipes/quickstart/train.jsonl: small templated instruction data (Alpaca format) for the
quick start. The file is committed; qtrain itself never runs Python. Re-run only to change the data:
    python3 scripts/make_quickstart_data.py > recipes/quickstart/train.jsonl
Each task mixes template words (learnable from any example) with copying from the prompt, so a
fine-tune shows up as held-out accuracy, not only as a falling training loss."""
import json
import random

rng = random.Random(1234)
NOUNS = ("apple bird book boat car cat chair cloud cup desk dog door egg farm flower game garden hat horse house "
         "key lamp leaf letter map moon night ocean pen phone plant river road rock school ship shoe song star "
         "stone table tree train window wolf year").split()
ADJ = "big small red blue green old new happy quiet bright dark soft warm cold fast slow".split()
NAMES = "Anna Ben Clara David Emma Felix Grace Henry Iris Jack Kate Leo Mia Noah Olga Paul Rosa Sam Tina Victor".split()
COLORS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
          "orange": "orange", "banana": "yellow", "night": "black", "milk": "white", "leaf": "green", "sea": "blue"}


def example():
    t = rng.randrange(6)
    if t == 0:
        n = rng.choice(NOUNS)
        return "Make this word plural.", n, n + "s"
    if t == 1:
        a, n = rng.choice(ADJ), rng.choice(NOUNS)
        return "Repeat the phrase exactly.", f"the {a} {n}", f"the {a} {n}"
    if t == 2:
        k = rng.randrange(1, 90)
        return "Count up four numbers from the given number.", str(k), ", ".join(str(k + i) for i in range(4))
    if t == 3:
        name, n = rng.choice(NAMES), rng.choice(NOUNS)
        return "Write a short sentence about the person and the thing.", f"{name}, {n}", f"{name} has a {n}."
    if t == 4:
        thing = rng.choice(sorted(COLORS))
        return "What color is it?", thing, f"The {thing} is {COLORS[thing]}."
    a, b = rng.sample(NOUNS, 2)
    return "Which word comes first in the alphabet?", f"{a} or {b}", min(a, b)


for _ in range(3000):
    ins, inp, out = example()
    print(json.dumps({"instruction": ins, "input": inp, "output": out}))
