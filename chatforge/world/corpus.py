"""Pre-training documents of the world: encyclopedia, news, stories, dialogues, glossaries, parallel
text, code, arithmetic with worked solutions, and labelled web noise.

Only known (not held-out) entities and training templates appear here. Every record is
{"id", "text", "source", "lang", "noise"}; `noise` is null for clean text, else a dict naming the kind
(ad, boilerplate, spam, near_duplicate, mojibake) and what was added, so a cleaning pipeline can be scored.
Documents that are exact or near copies of another (labelled reposts and the copies a templated world makes
by itself) also carry "dup_group": the id of the group's first document (see world/duplicates.py).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from chatforge.tools.calculator import written_call
from chatforge.world.entities import GROUP, World
from chatforge.world.templates import fields, relations_of, statement_templates

LANGS = ("en", "zh")


def entity_sentences(w: World, e, lang: str, rng: random.Random, relations: list[str] | None = None,
                     heldout_templates: bool = False) -> list[str]:
    f = fields(e, w, lang)
    rels = relations or relations_of(GROUP[e.kind])
    return [rng.choice(statement_templates(r, lang, heldout_templates)).format(**f) for r in rels]


def join(sentences: list[str], lang: str) -> str:
    return ("" if lang == "zh" else " ").join(sentences)


def encyclopedia(w: World, rng: random.Random, lang: str) -> str:
    e = rng.choice(w.all())
    sents = entity_sentences(w, e, lang, rng)
    rng.shuffle(sents)
    title = e.en if lang == "en" else e.zh
    return f"{title}\n\n{join(sents, lang)}"


def news(w: World, rng: random.Random, lang: str) -> str:
    ci = rng.choice([i for i, c in enumerate(w.companies) if not c.heldout])
    c = w.companies[ci]
    town = w.towns[c.facts["town"]]
    prods = [p for p in w.known("products") if p.facts["maker"] == ci]
    fc, ft = fields(c, w, lang), fields(town, w, lang)
    fp = fields(prods[0], w, lang) if prods else None
    year = rng.randint(max(c.facts["founded"], 1990), 2030)
    variant = rng.randrange(3)
    if lang == "en":
        if variant == 0:
            text = (f"{ft['name'].upper()} NEWS ({year}). {fc['name']}, based in {ft['name']}, says it now employs "
                    f"{fc['employees']} people. The town, which lies on the {ft['river']}, has {ft['population']} "
                    f"residents.")
        elif variant == 1:
            text = (f"Local report, {year}: the {ft['specialty']} market in {ft['name']} was busy this week. "
                    f"{fc['name']}, which was founded in {fc['founded']}, hired more workers and now has "
                    f"{fc['employees']} on its staff.")
        else:
            text = (f"Festival news: {ft['name']} celebrated its founding in {ft['founded']} with boats on the "
                    f"{ft['river']}. The mayor thanked all {ft['population']} residents and the team at {fc['name']}.")
        if fp:
            text += f" Its best seller, the {fp['name']} {fp['category']}, still costs {fp['price']} coins."
    else:
        if variant == 0:
            text = (f"{ft['name']}新闻（{year}年）。总部设在{ft['name']}的{fc['name']}表示，目前雇用了{fc['employees']}人。"
                    f"这个位于{ft['river']}边的小镇有{ft['population']}位居民。")
        elif variant == 1:
            text = (f"{year}年本地报道：本周{ft['name']}的{ft['specialty']}市场十分热闹。创立于{fc['founded']}年的"
                    f"{fc['name']}又招了一批工人，现在共有{fc['employees']}名员工。")
        else:
            text = (f"节日新闻：{ft['name']}在{ft['river']}上举行赛船，庆祝{ft['founded']}年建镇。镇长感谢全镇"
                    f"{ft['population']}位居民和{fc['name']}的团队。")
        if fp:
            text += f"它最畅销的{fp['name']}{fp['category']}仍然售价{fp['price']}个金币。"
    return text


def story(w: World, rng: random.Random, lang: str) -> str:
    p = rng.choice(w.known("people"))
    cr = rng.choice(w.known("creatures"))
    fp, fc = fields(p, w, lang), fields(cr, w, lang)
    ft = fields(w.towns[p.facts["town"]], w, lang)
    variant = rng.randrange(3)
    if lang == "en":
        if variant == 0:
            return (f"One morning {fp['name']}, a {fp['profession']} from {ft['name']}, walked along the {ft['river']}. "
                    f"There {fp['name']} met a {fc['color']} {fc['name']}. It had {fc['legs']} legs and was looking "
                    f"for {fc['food']}. {fp['name']} shared some {fc['food']} with it and went home happy.")
        if variant == 1:
            return (f"It was raining in {ft['name']}. {fp['name']}, who is {fp['age']} years old, heard a noise at the "
                    f"door. A small {fc['name']} stood there, its {fc['color']} coat wet on all {fc['legs']} legs. "
                    f"\"Come in,\" said {fp['name']}, and found some {fc['food']} for the visitor.")
        return (f"Every year the children of {ft['name']} ask {fp['name']} the {fp['profession']} for a story. "
                f"This year it was about a {fc['name']} that ate only {fc['food']} and walked on {fc['legs']} legs "
                f"all the way to the {ft['river']}.")
    if variant == 0:
        return (f"一天早上，来自{ft['name']}的{fp['profession']}{fp['name']}沿着{ft['river']}散步。"
                f"{fp['name']}在那里遇到了一只{fc['color']}的{fc['name']}。它有{fc['legs']}条腿，正在找{fc['food']}。"
                f"{fp['name']}分给它一些{fc['food']}，开心地回家了。")
    if variant == 1:
        return (f"{ft['name']}下着雨。{fp['age']}岁的{fp['name']}听见门口有动静。一只小小的{fc['name']}站在那里，"
                f"{fc['color']}的毛和{fc['legs']}条腿都湿透了。“进来吧，”{fp['name']}说，又给客人找了些{fc['food']}。")
    return (f"每年{ft['name']}的孩子们都请{fp['profession']}{fp['name']}讲故事。今年讲的是一只只吃{fc['food']}的"
            f"{fc['name']}，用{fc['legs']}条腿一路走到了{ft['river']}。")


def dialogue(w: World, rng: random.Random, lang: str) -> str:
    from chatforge.world.templates import question_templates

    e = rng.choice(w.known("towns") + w.known("people"))
    kind = "towns" if e.kind == "town" else "people"
    rels = rng.sample(relations_of(kind), 2)
    f = fields(e, w, lang)
    lines = []
    for r in rels:
        q = rng.choice(question_templates(r, lang)).format(**f)
        a = rng.choice(statement_templates(r, lang)).format(**f)
        lines += [("A: " if lang == "en" else "甲：") + q, ("B: " if lang == "en" else "乙：") + a]
    return "\n".join(lines)


def glossary(w: World, rng: random.Random, lang: str) -> str:
    ents = rng.sample(w.all(), 6)
    head = "Glossary (English — Chinese)" if lang == "en" else "词汇表（英文 — 中文）"
    return head + "\n" + "\n".join(f"{e.en} — {e.zh}" for e in ents)


def parallel(w: World, rng: random.Random, lang: str) -> str:
    e = rng.choice(w.all())
    seed = rng.random()
    en = join(entity_sentences(w, e, "en", random.Random(seed)), "en")
    zh = join(entity_sentences(w, e, "zh", random.Random(seed)), "zh")
    return f"English: {en}\n中文：{zh}" if lang == "en" else f"中文：{zh}\nEnglish: {en}"


def code(w: World, rng: random.Random, lang: str) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        crs = rng.sample(w.known("creatures"), 3)
        table = ", ".join(f'"{c.en}": {c.facts["legs"]}' for c in crs)
        ex = crs[0]
        return (f"def total_legs(counts):\n    \"\"\"Return the total number of legs of a herd.\n\n"
                f"    `counts` maps a creature name to how many there are.\n\n"
                f"    >>> total_legs({{\"{ex.en}\": 2}})\n    {2 * ex.facts['legs']}\n    \"\"\"\n"
                f"    legs = {{{table}}}\n    return sum(legs[name] * n for name, n in counts.items())\n")
    if kind == 1:
        ps = rng.sample(w.known("products"), 3)
        table = ", ".join(f'"{p.en}": {p.facts["price"]}' for p in ps)
        p = ps[0]
        return (f"PRICES = {{{table}}}\n\n\ndef order_cost(item, quantity, discount=0.0):\n"
                f"    \"\"\"Cost in coins of `quantity` items, after a fractional discount.\n\n"
                f"    >>> order_cost(\"{p.en}\", 3)\n    {3 * p.facts['price']}\n    \"\"\"\n"
                f"    return round(PRICES[item] * quantity * (1 - discount))\n")
    return ("def solve_cage(heads, legs):\n    \"\"\"Chickens (2 legs) and rabbits (4 legs): return (chickens, rabbits).\n\n"
            "    Raises ValueError when no whole-number answer exists.\n    \"\"\"\n"
            "    rabbits, rem = divmod(legs - 2 * heads, 2)\n    chickens = heads - rabbits\n"
            "    if rem or rabbits < 0 or chickens < 0:\n        raise ValueError(\"no solution\")\n"
            "    return chickens, rabbits\n")


def cage_problem(rng: random.Random, lang: str, heldout: bool = False, calc: bool = False) -> tuple[str, str, dict]:
    """(question, worked solution, gold counts). Held-out wording for eval; `calc`: the training solution
    computes each step with the calculator tool (`<<calc: EXPR>>VALUE`, tools/calculator.py)."""
    chickens, rabbits = rng.randint(1, 40), rng.randint(1, 40)
    heads, legs = chickens + rabbits, 2 * chickens + 4 * rabbits
    if lang == "en":
        q = (f"In a farmyard pen there are some hens and some bunnies: {heads} heads in all and {legs} feet. "
             f"Find the number of hens and bunnies." if heldout else
             f"A cage holds chickens and rabbits. There are {heads} heads and {legs} legs. How many of each?")
        sol = (f"Suppose every animal were a hen: that gives {2 * heads} feet, {legs - 2 * heads} short of {legs}. "
               f"Each bunny adds 2 feet, so bunnies = {legs - 2 * heads} / 2 = {rabbits} and hens = {chickens}. "
               f"Answer: {chickens} hens, {rabbits} bunnies." if heldout else
               f"If all {heads} were chickens there would be {2 * heads} legs. The extra {legs - 2 * heads} legs "
               f"come from rabbits, 2 each, so there are {rabbits} rabbits and {heads} - {rabbits} = {chickens} "
               f"chickens. Answer: {chickens} chickens, {rabbits} rabbits.")
    else:
        q = (f"农场的围栏里有母鸡和小兔，一共{heads}个脑袋、{legs}只脚。求母鸡和小兔的数量。" if heldout else
             f"笼子里有鸡和兔，共{heads}个头，{legs}条腿。鸡和兔各有多少只？")
        sol = (f"先把它们都当成母鸡：共{2 * heads}只脚，比{legs}少{legs - 2 * heads}只。每只小兔多出2只脚，"
               f"因此小兔有{rabbits}只，母鸡有{chickens}只。答案：母鸡{chickens}只，小兔{rabbits}只。" if heldout else
               f"假设{heads}只全是鸡，应有{2 * heads}条腿。多出的{legs - 2 * heads}条腿来自兔子，每只兔多2条，"
               f"所以兔有{rabbits}只，鸡有{heads}-{rabbits}={chickens}只。答案：鸡{chickens}只，兔{rabbits}只。")
    if calc and not heldout:
        two, extra = 2 * heads, legs - 2 * heads
        c2, cx, cr, cc = (written_call(f"2*{heads}", two), written_call(f"{legs}-{two}", extra),
                          written_call(f"{extra}/2", rabbits), written_call(f"{heads}-{rabbits}", chickens))
        sol = (f"If all {heads} were chickens there would be {c2} legs. The extra {cx} legs come from rabbits, "
               f"2 each, so there are {cr} rabbits and {cc} chickens. Answer: {chickens} chickens, {rabbits} rabbits."
               if lang == "en" else
               f"假设{heads}只全是鸡，应有{c2}条腿。多出的{cx}条腿来自兔子，每只兔多2条，所以兔有{cr}只，鸡有{cc}只。"
               f"答案：鸡{chickens}只，兔{rabbits}只。")
    return q, sol, {"chickens": chickens, "rabbits": rabbits}


def price_problem(w: World, rng: random.Random, lang: str, calc: bool = False) -> tuple[str, str, int]:
    p = rng.choice(w.known("products"))
    f = fields(p, w, lang)
    n = rng.randint(2, 9)
    total = n * p.facts["price"]
    called = written_call(f"{n}*{f['price']}", total) if calc else None
    if lang == "en":
        step = called or f"{n} x {f['price']} = {total}"
        return (f"How many coins do {n} {f['name']} {f['category']}s cost?",
                f"One {f['name']} costs {f['price']} coins, so {n} cost {step} coins. Answer: {total}", total)
    step = called or f"{n}×{f['price']}={total}"
    return (f"买{n}个{f['name']}{f['category']}要多少金币？",
            f"一个{f['name']}售价{f['price']}个金币，所以{n}个要{step}个金币。答案：{total}", total)


def arithmetic(w: World, rng: random.Random, lang: str) -> str:
    q, sol = (cage_problem(rng, lang)[:2] if rng.random() < 0.6 else price_problem(w, rng, lang)[:2])
    return (f"Question: {q} Solution: {sol}" if lang == "en" else f"问题：{q}解答：{sol}")


CLEAN_KINDS: dict[str, Callable] = {
    "encyclopedia": encyclopedia, "news": news, "story": story, "dialogue": dialogue, "glossary": glossary,
    "parallel": parallel, "code": code, "arithmetic": arithmetic
}
# relative share of each kind in the corpus
MIX = {"encyclopedia": 4, "news": 2, "story": 2, "dialogue": 2, "glossary": 1, "parallel": 2, "code": 1,
       "arithmetic": 3}

ADS = {"en": ["BUY NOW!!! Cheap {x} — 90% OFF at best-dealz.example", "Click here to win a free {x}!!!",
              "Sponsored: the {x} everyone is talking about. Order today!"],
       "zh": ["【广告】特价{x}，一折抢购，点击进入！", "恭喜您中奖！免费领取{x}，立即点击！", "赞助内容：人人都在买的{x}，今天下单！"]}
NAV = ["Home | News | About | Contact | Login", "© 2024 All rights reserved. Privacy | Terms | Cookies",
       "首页 | 新闻 | 关于我们 | 联系 | 登录", "Share on: Twitter | Facebook | WeChat | Email"]


def add_noise(doc: dict, rng: random.Random, w: World, earlier: list[dict]) -> dict:
    """Turn a clean document into a labelled noisy one (or a new noise document)."""
    kind = rng.choice(["ad", "boilerplate", "spam", "near_duplicate", "mojibake"])
    lang = doc["lang"] if doc["lang"] in LANGS else "en"
    text = doc["text"]
    if kind == "ad":
        x = rng.choice(w.known("products")).en if lang == "en" else rng.choice(w.known("products")).zh
        ad = rng.choice(ADS[lang]).format(x=x)
        lines = text.split("\n")
        pos = rng.randrange(len(lines) + 1)
        lines.insert(pos, ad)
        return {**doc, "text": "\n".join(lines), "noise": {"type": "ad", "added_lines": [ad]}}
    if kind == "boilerplate":
        head, foot = rng.choice(NAV), rng.choice(NAV)
        return {**doc, "text": f"{head}\n{text}\n{foot}", "noise": {"type": "boilerplate", "added_lines": [head, foot]}}
    if kind == "spam":
        words = rng.choices(["cheap", "free", "win", "best", "casino", "pills", "deal", "免费", "中奖", "优惠"], k=60)
        return {**doc, "text": " ".join(words), "source": "spam", "noise": {"type": "spam"}}
    if kind == "near_duplicate" and earlier:
        src = rng.choice(earlier)
        edited = src["text"].replace(".", "!", 1) if rng.random() < 0.5 else src["text"] + " (reposted)"
        return {**doc, "text": edited, "source": src["source"], "lang": src["lang"],
                "noise": {"type": "near_duplicate", "duplicate_of": src["id"]}}
    garbled = text.encode("utf-8").decode("latin-1") if lang == "zh" or rng.random() < 0.5 else \
        text.replace("'", "\u00e2\u20ac\u2122")
    return {**doc, "text": garbled, "noise": {"type": "mojibake"}}


def underlying_text(doc: dict) -> str:
    """The document as it was before noise was spliced in: ad / navigation lines taken out again, mojibake
    decoded back (both garblings are reversible; the apostrophe one changes nothing in a text without
    apostrophes, and such a "mojibake" document is a real document that should pass every filter)."""
    noise, text = doc["noise"], doc["text"]
    if noise is None:
        return text
    if noise["type"] in ("ad", "boilerplate"):
        lines = text.split("\n")
        for added in noise["added_lines"]:
            lines.remove(added)
        return "\n".join(lines)
    if noise["type"] == "mojibake":
        try:
            return text.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            return text.replace("\u00e2\u20ac\u2122", "'")
    return text


def label_duplicates(docs: list[dict], threshold: float = 0.8) -> None:
    """Add "dup_group" to every document that has an exact or near copy (exact 5-gram Jaccard >= threshold
    of the underlying texts): the ground truth a near-duplicate detector's precision is measured against."""
    from chatforge.world.duplicates import duplicate_groups

    for i, group in duplicate_groups([underlying_text(d) for d in docs], threshold).items():
        docs[i]["dup_group"] = docs[group]["id"]


def pretraining_documents(w: World, rng: random.Random, n_docs: int, noise_fraction: float) -> list[dict]:
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    docs: list[dict] = []
    for i in range(n_docs):
        kind = rng.choices(kinds, weights)[0]
        lang = rng.choice(LANGS) if kind not in ("code",) else "en"
        doc = {"id": i, "text": CLEAN_KINDS[kind](w, rng, lang),
               "source": kind, "lang": "en-zh" if kind in ("parallel", "glossary") else lang, "noise": None}
        if docs and rng.random() < noise_fraction:
            clean = [d for d in docs[-200:] if d["noise"] is None]
            doc = add_noise(doc, rng, w, clean)
        docs.append(doc)
    label_duplicates(docs)
    return docs
