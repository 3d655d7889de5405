"""The world's reference library: one short article per entity and language, for retrieval.

    world/library/docs.jsonl   {"id", "title", "text", "lang", "withheld"}   (chatforge index add reads it)

Articles about held-out entities (`withheld: true`) never appear in any training data, so a question about
them can only be answered from the library: closed-book the model cannot know, with retrieval it can read.
Articles about known entities are there too — they are what a question's retrieval has to pick its passage
from. Grounded demonstrations (`grounded_example`) teach the chat model to read numbered passages and cite
them; they use known entities only, and answer "not in the sources" when the passages miss the answer.
"""

from __future__ import annotations

import random

from chatforge.retrieval.grounding import sources_block
from chatforge.world.corpus import entity_sentences, join
from chatforge.world.entities import GROUP, Entity, World
from chatforge.world.templates import fields, question_templates, relations_of, statement_templates

NOT_IN_SOURCES = {"en": "The sources do not say, so I don't know.", "zh": "资料中没有提到，所以我不知道。"}


def doc_id(e: Entity, lang: str) -> str:
    return f"{e.kind}-{e.en}-{lang}"


def article(w: World, e: Entity, lang: str, rng: random.Random) -> dict:
    """{"title", "text"}: the entity's facts in training statement phrasings, in a shuffled order."""
    sents = entity_sentences(w, e, lang, rng)
    rng.shuffle(sents)
    return {"title": e.en if lang == "en" else e.zh, "text": join(sents, lang)}


def library_documents(w: World, rng: random.Random) -> list[dict]:
    out = []
    for e in w.all(include_heldout=True):
        for lang in ("en", "zh"):
            out.append({"id": doc_id(e, lang), **article(w, e, lang, rng), "lang": lang, "withheld": e.heldout})
    return out


def cite(sentence: str, n: int, lang: str) -> str:
    """A statement with its citation before the final full stop: "X has 5 people [1]." / "X有5人[1]。"."""
    for stop in (".", "。"):
        if sentence.endswith(stop):
            return f"{sentence[:-1]} [{n}]{stop}" if lang == "en" else f"{sentence[:-1]}[{n}]{stop}"
    return f"{sentence} [{n}]"


def grounded_example(w: World, rng: random.Random, lang: str, miss_rate: float = 0.15) -> list[dict]:
    """A grounded chat turn: a sources block of one to three articles (the asked entity's and same-kind
    distractors, in random order; with probability `miss_rate` distractors only), the question, and the
    answer citing the passage it read."""
    e = rng.choice(w.known(GROUP[rng.choice(list(GROUP))]))
    r = rng.choice(relations_of(GROUP[e.kind]))
    f = fields(e, w, lang)
    others = [o for o in w.known(GROUP[e.kind]) if o is not e]
    miss = rng.random() < miss_rate
    n = rng.choice([1, 2, 3])
    picked = rng.sample(others, n) if miss else [e, *rng.sample(others, n - 1)]
    rng.shuffle(picked)
    passages = [article(w, x, lang, rng) for x in picked]
    q = rng.choice(question_templates(r, lang)).format(**f)
    if miss:
        a = NOT_IN_SOURCES[lang]
    else:
        a = cite(rng.choice(statement_templates(r, lang)).format(**f), picked.index(e) + 1, lang)
    return [{"role": "system", "content": sources_block(passages, lang)}, {"role": "user", "content": q},
            {"role": "assistant", "content": a}]
