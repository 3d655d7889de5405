"""The world's reference library: one short article per entity and language, for retrieval.

    world/library/docs.jsonl   {"id", "title", "text", "lang", "withheld"}   (chatforge index add reads it)

Articles about held-out entities (`withheld: true`) never appear in any training data, so a question about
them can only be answered from the library: closed-book the model cannot know, with retrieval it can read.
Articles about known entities are there too — they are what a question's retrieval has to pick its passage
from. Grounded demonstrations (`grounded_example`) teach the chat model to read numbered passages and cite
them. Their passages are about invented entities (entities.invent_entity: names that exist nowhere else,
random facts), so the answer can only come from reading — with known entities a model answers from memory
and never learns to read (it did exactly that: 0% on withheld articles). They answer "the sources do not
say" when no passage is about the asked entity.
"""

from __future__ import annotations

import random

from chatforge.retrieval.grounding import sources_block
from chatforge.world.corpus import entity_sentences, join
from chatforge.world.entities import GROUP, Entity, World, invent_entity
from chatforge.world.templates import RELATIONS, fields, question_templates, relations_of

# a grounded demonstration's sources block stays under this many characters (distractors are dropped), so it
# fits the tiny preset's 256-token rows with any tokenizer the world's text trains (~1.0 zh / 3.0 en chars/token)
MAX_SOURCES_CHARS = {"en": 500, "zh": 170}
NOT_IN_SOURCES = {"en": "The sources do not say, so I don't know.", "zh": "资料中没有提到，所以我不知道。"}


def doc_id(e: Entity, lang: str) -> str:
    return f"{e.kind}-{e.en}-{lang}"


def article(w: World, e: Entity, lang: str, rng: random.Random) -> dict:
    """{"title", "text", "sentences": {relation: sentence}}: the entity's facts in training statement
    phrasings, in a shuffled order."""
    sents = entity_sentences(w, e, lang, rng)
    by_relation = dict(zip(relations_of(GROUP[e.kind]), sents))
    rng.shuffle(sents)
    return {"title": e.en if lang == "en" else e.zh, "text": join(sents, lang), "sentences": by_relation}


def library_documents(w: World, rng: random.Random) -> list[dict]:
    out = []
    for e in w.all(include_heldout=True):
        for lang in ("en", "zh"):
            a = article(w, e, lang, rng)
            out.append({"id": doc_id(e, lang), "title": a["title"], "text": a["text"], "lang": lang,
                        "withheld": e.heldout})
    return out


# how a grounded answer begins: the value then follows as it is written in the passage (after a space in English,
# so its tokens are the passage's own and the copy head can take them from there)
ANSWER_PREFIX = {"en": "Answer: ", "zh": "答案："}
# share of grounded demonstrations whose passage about the asked entity comes first, as a retriever ranks it
# (BM25 put the withheld article first for 57 of the 60 retrieval_qa questions); the rest are shuffled, so the
# model learns to find the asked entity's passage rather than to trust the first one
GOLD_FIRST = 0.8
# share of invented entities whose town / maker is invented too (invent_entity: values of several tokens to copy)
INVENTED_LINK = 0.5


def cited_answer(value: str, n: int, lang: str) -> str:
    """A short extractive answer with its citation: "Answer: Crane River [1]." / "答案：鹤河[1]。"."""
    return f"{ANSWER_PREFIX[lang]}{value} [{n}]." if lang == "en" else f"{ANSWER_PREFIX[lang]}{value}[{n}]。"


def grounded_case(w: World, rng: random.Random, lang: str, miss_rate: float = 0.15,
                  heldout: bool = False) -> tuple[list[dict], tuple[str, int] | None]:
    """(system sources + user question, (the asked value, the number of its passage)), the second None when
    no passage is about the asked entity.
    The sources block holds one to three articles about invented entities of one kind (the asked one and
    distractors; the asked one first with probability GOLD_FIRST; with probability `miss_rate` distractors
    only). Training questions (`heldout` False) come in the 7 training wordings; the reading dev items
    (generate.reading_dev_items) ask in the 2 held-out wordings, as retrieval_qa does."""
    kind = rng.choice(list(GROUP))
    invented: dict[str, Entity] = {}
    while len(invented) < 4:  # four different names
        x = invent_entity(w, rng, kind, INVENTED_LINK)
        invented.setdefault(x.en, x)
    e, *others = invented.values()
    r = rng.choice(relations_of(GROUP[kind]))
    f = fields(e, w, lang)
    miss = rng.random() < miss_rate
    n = rng.choice([1, 2, 3])
    picked = others[:n] if miss else [e, *others[:n - 1]]
    if miss or rng.random() >= GOLD_FIRST:
        rng.shuffle(picked)
    passages = [article(w, x, lang, rng) for x in picked]
    while len(passages) > 1 and len(sources_block(passages, lang)) > MAX_SOURCES_CHARS[lang]:
        drop = next(i for i in reversed(range(len(picked))) if picked[i] is not e)
        del picked[drop], passages[drop]
    q = rng.choice(question_templates(r, lang, heldout)).format(**f)
    hit = None if miss else (f[RELATIONS[r]["answer"]], picked.index(e) + 1)
    return [{"role": "system", "content": sources_block(passages, lang)}, {"role": "user", "content": q}], hit


def grounded_example(w: World, rng: random.Random, lang: str, miss_rate: float = 0.15) -> list[dict]:
    """A grounded chat turn (grounded_case) with its short extractive answer: the asked value exactly as the
    passage writes it, cited. Short on purpose: what a small model must learn is to find one value in a
    passage and copy it. Answers that copied the whole sentence made it pick a sentence first, which it got
    wrong (5.0% with retrieval), and paraphrased answers also asked it to rewrite (0.0%)."""
    messages, hit = grounded_case(w, rng, lang, miss_rate)
    a = NOT_IN_SOURCES[lang] if hit is None else cited_answer(hit[0], hit[1], lang)
    return [*messages, {"role": "assistant", "content": a}]
