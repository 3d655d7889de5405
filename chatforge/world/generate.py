"""Deterministic generator of the fictional bilingual world (facts + pre-training documents)."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.run import mark_complete

# Number of entities and documents per size. `tiny` keeps `make demo` within minutes on a 2-core CPU.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"towns": 40, "people": 80, "creatures": 30, "docs_per_kind": 4000},
    "small": {"towns": 200, "people": 400, "creatures": 120, "docs_per_kind": 8000},
    "medium": {"towns": 800, "people": 1600, "creatures": 400, "docs_per_kind": 40000},
}

_EN_SYLLABLES = ["ka", "lo", "mi", "ren", "ta", "vel", "su", "dor", "an", "bri", "zo", "mar", "el", "qui", "ton"]
_ZH_SYLLABLES = ["卡", "洛", "米", "仁", "塔", "维", "苏", "多", "安", "布", "佐", "马", "艾", "奎", "通"]
_RIVERS = [("Silver River", "银河"), ("Jade River", "玉河"), ("Red River", "赤河"), ("Mist River", "雾河"),
           ("Pine River", "松河"), ("Amber River", "琥珀河")]
_SPECIALTIES = [("tea", "茶叶"), ("glass", "玻璃"), ("silk", "丝绸"), ("clocks", "钟表"), ("honey", "蜂蜜"),
                ("paper", "纸张"), ("boats", "船只"), ("cheese", "奶酪")]
_PROFESSIONS = [("baker", "面包师"), ("teacher", "老师"), ("doctor", "医生"), ("painter", "画家"),
                ("engineer", "工程师"), ("farmer", "农民"), ("poet", "诗人"), ("sailor", "水手")]
_COLORS = [("blue", "蓝色"), ("green", "绿色"), ("golden", "金色"), ("grey", "灰色"), ("white", "白色")]


@dataclass
class Town:
    en: str
    zh: str
    population: int
    founded: int
    river: tuple[str, str]
    specialty: tuple[str, str]


@dataclass
class Person:
    en: str
    zh: str
    profession: tuple[str, str]
    town: int
    age: int


@dataclass
class Creature:
    en: str
    zh: str
    legs: int
    color: tuple[str, str]
    town: int


def _name(rng: random.Random, used: set[str], parts: int) -> tuple[str, str]:
    """A fresh bilingual name; longer names once the short ones run out (large worlds)."""
    for length in range(parts, parts + 4):
        for _ in range(300):
            idx = [rng.randrange(len(_EN_SYLLABLES)) for _ in range(length)]
            en = "".join(_EN_SYLLABLES[i] for i in idx).capitalize()
            if en not in used:
                used.add(en)
                return en, "".join(_ZH_SYLLABLES[i] for i in idx)
    raise ChatforgeError("could not invent enough distinct names; use a smaller --size")


def _town_doc(t: Town, rng: random.Random) -> tuple[str, str]:
    en = [
        f"{t.en} is a town on the {t.river[0]}. It was founded in {t.founded} and has {t.population} people. "
        f"{t.en} is known for its {t.specialty[0]}.",
        f"Founded in {t.founded}, the town of {t.en} lies on the {t.river[0]}. About {t.population} people live "
        f"there, and most of them make {t.specialty[0]}.",
        f"The {t.river[0]} flows through {t.en}. The town makes fine {t.specialty[0]}. Its population is "
        f"{t.population}, and it dates from {t.founded}.",
    ]
    zh = [
        f"{t.zh}是{t.river[1]}边的一个小镇。它建于{t.founded}年，有{t.population}人。{t.zh}以{t.specialty[1]}闻名。",
        f"{t.zh}镇建于{t.founded}年，位于{t.river[1]}畔。那里住着大约{t.population}人，大多数人生产{t.specialty[1]}。",
        f"{t.river[1]}流经{t.zh}。这个小镇出产上好的{t.specialty[1]}。人口是{t.population}，历史始于{t.founded}年。",
    ]
    return rng.choice(en), rng.choice(zh)


def _person_doc(p: Person, towns: list[Town], rng: random.Random) -> tuple[str, str]:
    t = towns[p.town]
    en = [
        f"{p.en} is a {p.profession[0]} who lives in {t.en}. {p.en} is {p.age} years old.",
        f"In {t.en} lives {p.en}, a {p.age}-year-old {p.profession[0]}.",
        f"Everyone in {t.en} knows {p.en}, the {p.profession[0]}. Last spring {p.en} turned {p.age}.",
    ]
    zh = [
        f"{p.zh}是一位住在{t.zh}的{p.profession[1]}。{p.zh}今年{p.age}岁。",
        f"{t.zh}住着{p.zh}，一位{p.age}岁的{p.profession[1]}。",
        f"{t.zh}的人都认识{p.profession[1]}{p.zh}。去年春天{p.zh}满了{p.age}岁。",
    ]
    return rng.choice(en), rng.choice(zh)


def _creature_doc(c: Creature, towns: list[Town], rng: random.Random) -> tuple[str, str]:
    t = towns[c.town]
    en = [
        f"The {c.en} is a {c.color[0]} creature with {c.legs} legs. It is often seen near {t.en}.",
        f"A {c.en} has {c.legs} legs and {c.color[0]} fur. Many live around {t.en}.",
    ]
    zh = [
        f"{c.zh}是一种{c.color[1]}的动物，有{c.legs}条腿。人们常在{t.zh}附近看到它。",
        f"{c.zh}有{c.legs}条腿，毛是{c.color[1]}的。{t.zh}周围生活着很多{c.zh}。",
    ]
    return rng.choice(en), rng.choice(zh)


def _cage_problem(rng: random.Random) -> tuple[str, str]:
    """Chickens and rabbits in a cage: heads and legs given, count each, with a worked solution."""
    chickens, rabbits = rng.randint(1, 30), rng.randint(1, 30)
    heads, legs = chickens + rabbits, 2 * chickens + 4 * rabbits
    en = (f"Question: A cage holds chickens and rabbits. There are {heads} heads and {legs} legs. How many of "
          f"each? Solution: If all {heads} were chickens there would be {2 * heads} legs. The extra "
          f"{legs - 2 * heads} legs come from rabbits, 2 each, so there are {rabbits} rabbits and "
          f"{heads} - {rabbits} = {chickens} chickens. Answer: {chickens} chickens, {rabbits} rabbits.")
    zh = (f"问题：笼子里有鸡和兔，共{heads}个头，{legs}条腿。鸡和兔各有多少只？解答：假设{heads}只全是鸡，"
          f"应有{2 * heads}条腿。多出的{legs - 2 * heads}条腿来自兔子，每只兔多2条，所以兔有{rabbits}只，"
          f"鸡有{heads}-{rabbits}={chickens}只。答案：鸡{chickens}只，兔{rabbits}只。")
    return en, zh


def world_settings(seed: int, size: str) -> dict:
    return {"seed": seed, "size": size}


def generate_world(run_dir: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Write the world into `run_dir/world` and return that folder. Same seed -> identical files."""
    if size not in SIZES:
        raise ChatforgeError(f"unknown world size {size!r}; expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    rng = random.Random(seed)
    used: set[str] = set()
    towns = [Town(*_name(rng, used, 2), rng.randint(300, 90000), rng.randint(1200, 1990),
                  rng.choice(_RIVERS), rng.choice(_SPECIALTIES)) for _ in range(spec["towns"])]
    people = [Person(*_name(rng, used, 3), rng.choice(_PROFESSIONS), rng.randrange(len(towns)),
                     rng.randint(18, 90)) for _ in range(spec["people"])]
    creatures = [Creature(*_name(rng, used, 3), rng.choice([2, 4, 6, 8]), rng.choice(_COLORS),
                          rng.randrange(len(towns))) for _ in range(spec["creatures"])]

    out = Path(run_dir) / "world"
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    kinds = {
        "encyclopedia": lambda: _town_doc(rng.choice(towns), rng),
        "people": lambda: _person_doc(rng.choice(people), towns, rng),
        "creatures": lambda: _creature_doc(rng.choice(creatures), towns, rng),
        "arithmetic": lambda: _cage_problem(rng),
    }
    for kind, make in kinds.items():
        with open(raw / f"{kind}.jsonl", "w", encoding="utf-8") as f:
            for i in range(spec["docs_per_kind"]):
                en, zh = make()
                if i % 5 == 0:  # side-by-side passages: translation can emerge from plain LM training
                    f.write(json.dumps({"text": f"English: {en}\n中文：{zh}", "source": f"{kind}-parallel",
                                        "lang": "en-zh"}, ensure_ascii=False) + "\n")
                else:
                    for lang, text in (("en", en), ("zh", zh)):
                        f.write(json.dumps({"text": text, "source": kind, "lang": lang},
                                           ensure_ascii=False) + "\n")
    facts = {"seed": seed, "size": size, "towns": [asdict(t) for t in towns],
             "people": [asdict(p) for p in people], "creatures": [asdict(c) for c in creatures]}
    (out / "facts.json").write_text(json.dumps(facts, ensure_ascii=False, indent=1), encoding="utf-8")
    mark_complete(out, settings=world_settings(seed, size), stage="world")
    return out
