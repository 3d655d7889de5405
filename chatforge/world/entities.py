"""The fictional world's entities and their facts: towns, people, creatures, companies, products.

Every fact lives here once; every document, demonstration and eval item that mentions an entity reads it
from here, so facts are consistent everywhere by construction (and a test checks the generated text).
A fraction of entities is `heldout`: they never appear in training data, only in eval passages that give
their facts in the prompt (reading tasks), so eval can't be solved by memorisation. `ghosts` are names
that exist nowhere in the world: the honesty eval asks about them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from chatforge import ChatforgeError

EN_SYL = ["ka", "lo", "mi", "ren", "ta", "vel", "su", "dor", "an", "bri", "zo", "mar", "el", "qui", "ton",
          "fen", "go", "ha", "ji", "nu"]
ZH_SYL = ["卡", "洛", "米", "仁", "塔", "维", "苏", "多", "安", "布", "佐", "马", "艾", "奎", "通",
          "芬", "戈", "哈", "吉", "努"]
RIVERS = [("Silver River", "银河"), ("Jade River", "玉河"), ("Red River", "赤河"), ("Mist River", "雾河"),
          ("Pine River", "松河"), ("Amber River", "琥珀河"), ("Crane River", "鹤河"), ("Stone River", "石河")]
SPECIALTIES = [("tea", "茶叶"), ("glass", "玻璃"), ("silk", "丝绸"), ("clocks", "钟表"), ("honey", "蜂蜜"),
               ("paper", "纸张"), ("boats", "船只"), ("cheese", "奶酪"), ("lanterns", "灯笼"), ("kites", "风筝")]
PROFESSIONS = [("baker", "面包师"), ("teacher", "老师"), ("doctor", "医生"), ("painter", "画家"),
               ("engineer", "工程师"), ("farmer", "农民"), ("poet", "诗人"), ("sailor", "水手"),
               ("librarian", "图书管理员"), ("carpenter", "木匠")]
COLORS = [("blue", "蓝色"), ("green", "绿色"), ("golden", "金色"), ("grey", "灰色"), ("white", "白色"),
          ("red", "红色")]
FOODS = [("berries", "浆果"), ("fish", "鱼"), ("leaves", "树叶"), ("seeds", "种子"), ("insects", "昆虫")]
CATEGORIES = [("umbrella", "雨伞"), ("teapot", "茶壶"), ("bicycle", "自行车"), ("lamp", "台灯"),
              ("backpack", "背包"), ("radio", "收音机")]


# Entity.kind -> the World attribute (and relation group) holding that kind
GROUP = {"town": "towns", "person": "people", "creature": "creatures", "company": "companies",
         "product": "products"}


@dataclass
class Entity:
    kind: str
    en: str
    zh: str
    heldout: bool = False
    facts: dict = field(default_factory=dict)  # relation -> value (numbers, (en, zh) pairs, entity ids)


@dataclass
class World:
    seed: int
    towns: list[Entity]
    people: list[Entity]
    creatures: list[Entity]
    companies: list[Entity]
    products: list[Entity]
    ghosts: list[Entity]  # names that exist nowhere: for "I don't know"

    def all(self, include_heldout: bool = False) -> list[Entity]:
        out = self.towns + self.people + self.creatures + self.companies + self.products
        return out if include_heldout else [e for e in out if not e.heldout]

    def known(self, kind: str) -> list[Entity]:
        return [e for e in getattr(self, kind) if not e.heldout]

    def heldout(self, kind: str) -> list[Entity]:
        return [e for e in getattr(self, kind) if e.heldout]


def syllable_name(rng: random.Random, length: int) -> tuple[str, str]:
    """(English, Chinese) names built from the same `length` random syllables."""
    idx = [rng.randrange(len(EN_SYL)) for _ in range(length)]
    return "".join(EN_SYL[i] for i in idx).capitalize(), "".join(ZH_SYL[i] for i in idx)


# companies' names end in this
COMPANY_SUFFIX = (" Works", "工坊")


class _Namer:
    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def __call__(self, syllables: int, suffix: tuple[str, str] = ("", "")) -> tuple[str, str]:
        """A fresh bilingual name; longer names once the short ones run out (large worlds). Uniqueness is
        checked on the name before any suffix, so "Jibri" (a town) and "Jibri Works" never coexist."""
        for length in range(syllables, syllables + 4):
            for _ in range(300):
                en, zh = syllable_name(self.rng, length)
                if en not in self.used:
                    self.used.add(en)
                    return en + suffix[0], zh + suffix[1]
        raise ChatforgeError("could not invent enough distinct names; use a smaller --size")


# each kind's own facts, drawn from one random stream (links to other entities are added by the caller)
FACTS = {
    "town": lambda rng: {"population": rng.randint(300, 90000), "founded": rng.randint(1200, 1990),
                         "river": rng.choice(RIVERS), "specialty": rng.choice(SPECIALTIES)},
    "person": lambda rng: {"profession": rng.choice(PROFESSIONS), "age": rng.randint(18, 90)},
    "creature": lambda rng: {"legs": rng.choice([2, 4, 6, 8]), "color": rng.choice(COLORS), "food": rng.choice(FOODS)},
    "company": lambda rng: {"founded": rng.randint(1850, 2020), "employees": rng.randint(5, 5000)},
    "product": lambda rng: {"category": rng.choice(CATEGORIES), "price": rng.randint(5, 500)},
}
# an invented name ends in this (no world name does), so it never equals, or ends like, a world entity's name
INVENTED_SUFFIX = ("s", "斯")


# an invented entity's link: the fact, the kind of entity it names, and the world's list of those
LINKS = {"person": ("town", "town", "towns"), "creature": ("town", "town", "towns"),
         "company": ("town", "town", "towns"), "product": ("maker", "company", "companies")}


def invent_entity(w: World, rng: random.Random, kind: str, invented_link: float = 0.0) -> Entity:
    """An entity that exists only where it is used (a reading passage): a fresh name, random facts, a link to a
    known town / company, or with probability `invented_link` to an invented one (a name the tokenizer never
    merged, so it is several tokens to copy: a withheld town such as Nuel is too, and a model that only ever
    copied known names, one token each, copied its first token and went on with digits). Reading about it is
    the only way to know its facts."""
    en, zh = syllable_name(rng, 3)
    en, zh = en + INVENTED_SUFFIX[0], zh + INVENTED_SUFFIX[1]
    if kind == "company":
        en, zh = en + COMPANY_SUFFIX[0], zh + COMPANY_SUFFIX[1]
    e = Entity(kind, en, zh, facts=FACTS[kind](rng))
    if kind in LINKS:
        fact, linked_kind, pool = LINKS[kind]
        if rng.random() < invented_link:
            e.facts[fact] = invent_entity(w, rng, linked_kind)
        else:
            e.facts[fact] = getattr(w, pool).index(rng.choice(w.known(pool)))
    return e


def build_world(seed: int, counts: dict[str, int], heldout_fraction: float = 0.1) -> World:
    rng = random.Random(seed)
    name = _Namer(rng)

    def make(kind: str, n: int, syl: int, suffix=("", "")) -> list[Entity]:
        ents = [Entity(kind, *name(syl, suffix)) for _ in range(n)]
        for e in ents:
            e.facts = FACTS[kind](rng)
        # the last ones are held out: never in training text (at least one of each kind)
        k = max(1, round(n * heldout_fraction))
        for e in ents[-k:]:
            e.heldout = True
        return ents

    towns = make("town", counts["towns"], 2)
    known_towns = [i for i, t in enumerate(towns) if not t.heldout]
    held_towns = [i for i, t in enumerate(towns) if t.heldout]

    def town_for(e_index: int, n: int) -> int:
        # held-out people/creatures live in held-out towns, so no held-out fact hides in a known entity
        pool = held_towns if e_index >= n - max(1, round(n * heldout_fraction)) else known_towns
        return rng.choice(pool)

    people = make("person", counts["people"], 3)
    creatures = make("creature", counts["creatures"], 3)
    companies = make("company", counts["companies"], 2, COMPANY_SUFFIX)
    products = make("product", counts["products"], 2)
    for group in (people, creatures, companies):
        for i, e in enumerate(group):
            e.facts["town"] = town_for(i, len(group))
    known_companies = [i for i, c in enumerate(companies) if not c.heldout]
    held_companies = [i for i, c in enumerate(companies) if c.heldout]
    for p in products:
        p.facts["maker"] = rng.choice(held_companies if p.heldout else known_companies)
    for ti, t in enumerate(towns):  # a mayor who lives in the town, when there is one
        residents = [i for i, p in enumerate(people) if p.facts["town"] == ti]
        t.facts["mayor"] = residents[0] if residents else None
    ghosts = [Entity(k, *name(3)) for k in ("town", "person", "creature", "company") for _ in range(
        max(4, counts["towns"] // 4))]
    return World(seed, towns, people, creatures, companies, products, ghosts)
