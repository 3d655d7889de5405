"""Generate the world into `<run>/world/`: deterministic for a seed (byte-identical files).

    world/raw/<kind>.jsonl     pre-training documents ({"id","text","source","lang","noise"})
    world/sft.jsonl            demonstrations ({"messages", "task"})
    world/rankings.jsonl       ranked answers ({"prompt","responses","ranking","labeler","grades"})
    world/prompts.jsonl        RL prompts not seen in SFT ({"prompt","answer","task"})
    world/eval/<task>.jsonl    held-out capability-suite items (decontaminated against all of the above)
    world/moderation.jsonl     harmful / benign requests for the moderation classifier ({"text","label","lang"})
    world/library/docs.jsonl  one article per entity and language, held-out ones flagged "withheld" (retrieval)
    world/grounded.jsonl       only with `chatforge world --grounded N`: N more reading demonstrations (below)
    world/facts.json           every entity and fact (held-out ones flagged)
    world/stats.json           counts per kind, decontamination, labeler agreement
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from itertools import combinations
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.run import mark_complete
from chatforge.textio import read_jsonl
from chatforge.world import chat_data, corpus, decontam, evalsets, library
from chatforge.world.corpus import LANGS
from chatforge.world.entities import World, build_world
from chatforge.world.moderation_data import MODERATION_EXAMPLES, moderation_examples

SIZES: dict[str, dict[str, int]] = {
    # entities, pre-training documents, demonstrations, ranked prompts, RL prompts, eval items per task
    "tiny": {"towns": 40, "people": 80, "creatures": 30, "companies": 20, "products": 30, "docs": 24000,
             "sft": 3500, "rankings": 600, "prompts": 300, "eval": 60},
    "small": {"towns": 200, "people": 400, "creatures": 120, "companies": 80, "products": 120, "docs": 80000,
              "sft": 20000, "rankings": 4000, "prompts": 2000, "eval": 200},
    "medium": {"towns": 800, "people": 1600, "creatures": 400, "companies": 300, "products": 500, "docs": 400000,
               "sft": 60000, "rankings": 12000, "prompts": 6000, "eval": 400},
}
NOISE_FRACTION = 0.08


LABELER_NOISE = 1.3  # sigma of each simulated labeler's grade noise: ~73% pairwise agreement, as with people
LABELERS = 5


def world_settings(seed: int, size: str, labeler_noise: float = LABELER_NOISE, labelers: int = LABELERS) -> dict:
    return {"seed": seed, "size": size, "labeler_noise": labeler_noise, "labelers": labelers}


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def labeler_agreement(records: list[dict]) -> float | None:
    """Fraction of answer pairs two labelers order the same way, over doubly-ranked prompts."""
    by_prompt: dict[str, list[list[int]]] = {}
    for r in records:
        by_prompt.setdefault(json.dumps([r["prompt"], r["responses"]], ensure_ascii=False), []).append(r["ranking"])
    agree = total = 0
    for rankings in by_prompt.values():
        if len(rankings) < 2:
            continue
        a, b = ({(x, y) for x, y in combinations(rk, 2)} for rk in rankings[:2])
        agree, total = agree + len(a & b), total + len(a)
    return agree / total if total else None


def part_rng(seed: int, part: str) -> random.Random:
    """The random stream of one part of the world: independent streams, so changing one part never shifts another."""
    return random.Random(f"{seed}-{part}")


def world_moderation(w, seed: int, size: str) -> list[dict]:
    """The world's moderation records (also what `safety.moderation` regenerates when the file is missing)."""
    return moderation_examples(w, part_rng(seed, "moderation"), MODERATION_EXAMPLES[size])


def _saved_world(world_dir: Path) -> tuple[dict, World] | None:
    """(facts.json's content, the world rebuilt from its seed and size), or None when the folder has none."""
    facts_path = world_dir / "facts.json"
    if not facts_path.is_file():
        return None
    facts = json.loads(facts_path.read_text(encoding="utf-8"))
    return facts, build_world(facts["seed"], SIZES[facts["size"]])


def write_grounded(world_dir: str | Path, n: int, seed: int | None = None, size: str | None = None) -> Path:
    """`world_dir/grounded.jsonl`: n extra grounded demonstrations ({"messages", "task": "grounded"}) about
    fresh invented entities, for SFT next to sft.jsonl (`--sft-data world/sft.jsonl world/grounded.jsonl`).

    Why a separate file: sft.jsonl's share of them (~1 in 7) is what the demo's small model gets; a model that
    can learn to read needs far more, and never the same passage twice (README's results: what they gave a
    gpu-small-shaped model on one H100). Outside the world's settings, so adding it never invalidates the
    stages trained on the world (`chatforge world --grounded N` on an existing world writes only this file).
    Deterministic for (seed, n). The eval items are not re-filtered against it: invented names end in a suffix
    no world entity has, and a test checks that 400 of them share no 13-gram with the tiny world's eval items.
    `seed` / `size`, when given, must be the world's (a request for another world is refused, not applied)."""
    world_dir = Path(world_dir)
    if n < 1:
        raise ChatforgeError(f"--grounded must be a positive count of demonstrations (got {n})")
    saved = _saved_world(world_dir)
    if saved is None:
        raise ChatforgeError(f"{world_dir} has no facts.json: generate the world first (chatforge world --run ...)")
    facts, w = saved
    if any(v is not None and v != facts[k] for k, v in {"seed": seed, "size": size}.items()):
        raise ChatforgeError(f"{world_dir} was made with seed {facts['seed']}, size {facts['size']}: "
                             "--grounded adds to it (drop --seed / --size, or use another --run)")
    rng = part_rng(facts["seed"], "grounded")
    records = []
    for _ in range(n):
        records.append({"messages": library.grounded_example(w, rng, rng.choice(LANGS)), "task": "grounded"})
    out = world_dir / "grounded.jsonl"
    _write_jsonl(out, records)
    return out


def reading_dev_items(world_dir: str | Path, n: int) -> list[dict]:
    """n dev items for SFT checkpoint selection: grounded questions about invented entities with the passages
    given (library.grounded_case, always answerable), asked in the held-out wordings — what retrieval_qa asks,
    about entities disjoint from its withheld ones, so choosing a checkpoint on them never looks at its items.
    Not in world/eval: the sources block repeats training text (its instruction line), which decontamination
    would rightly drop. Deterministic for the world's seed; [] for a folder without facts.json."""
    saved = _saved_world(Path(world_dir))
    if saved is None:
        return []
    facts, w = saved
    rng = part_rng(facts["seed"], "reading-dev")
    out = []
    for i in range(n):
        lang = rng.choice(LANGS)
        messages, (value, _) = library.grounded_case(w, rng, lang, miss_rate=0.0, heldout=True)
        out.append({"id": f"reading-{i}", "task": "reading", "lang": lang, "messages": messages,
                    "answers": [value], "reference_answer": value, "scorer": "contains_match"})
    return out


def selection_dev_items(world_dir: str | Path, n: int) -> dict[str, list[dict]]:
    """{task: n dev items} for SFT checkpoint selection, never the eval's items: the suite's instruction tasks
    drawn again by their eval makers from the world's "dev" random stream, minus any conversation that is in
    `world/eval` (evalsets.dev_items), and `reading` (reading_dev_items). Selecting on the eval's own first
    items, as selection once did, let the reported scores of those tasks share the choice's luck.
    Deterministic for the world's seed; {} for a folder without facts.json."""
    world_dir = Path(world_dir)
    saved = _saved_world(world_dir)
    if saved is None:
        return {}
    facts, w = saved
    exclude = {evalsets.conversation_key(it) for f in sorted((world_dir / "eval").glob("*.jsonl"))
               for it in read_jsonl(f) if it.get("messages")}
    items = evalsets.dev_items(w, part_rng(facts["seed"], "dev"), evalsets.DEV_MAKERS, n, exclude)
    return {**items, "reading": reading_dev_items(world_dir, n)}


def generate_world(run_dir: str | Path, seed: int = 0, size: str = "tiny", labeler_noise: float = LABELER_NOISE,
                   labelers: int = LABELERS) -> Path:
    """Write the world into `run_dir/world` and return that folder."""
    if size not in SIZES:
        raise ChatforgeError(f"unknown world size {size!r}; expected one of {sorted(SIZES)}")
    if labeler_noise < 0 or labelers < 2:
        raise ChatforgeError(f"labeler noise must be >= 0 and labelers >= 2 (got {labeler_noise}, {labelers})")
    spec = SIZES[size]
    w = build_world(seed, spec)

    def rng(part: str) -> random.Random:
        return part_rng(seed, part)

    docs = corpus.pretraining_documents(w, rng("corpus"), spec["docs"], NOISE_FRACTION)
    sft = chat_data.sft_examples(w, rng("sft"), spec["sft"])
    ranked = chat_data.rankings(w, rng("rankings"), spec["rankings"], n_labelers=labelers,
                                disagreement=labeler_noise)
    sft_users = {m["content"] for ex in sft for m in ex["messages"] if m["role"] == "user"}
    prompts = chat_data.rl_prompts(w, rng("prompts"), spec["prompts"], exclude=sft_users)
    evals = evalsets.eval_items(w, rng("eval"), spec["eval"])
    articles = library.library_documents(w, rng("library"))
    moderation = world_moderation(w, seed, size)

    training_texts = [d["text"] for d in docs]
    training_texts += [m["content"] for ex in sft for m in ex["messages"]]
    training_texts += [m["content"] for r in ranked for m in r["prompt"]] + [x for r in ranked for x in r["responses"]]
    training_texts += [m["content"] for p in prompts for m in p["prompt"]]
    training_texts += [r["text"] for r in moderation]  # the classifier trains on them: keep eval items apart
    index = decontam.build_index(training_texts)
    dropped = {}
    for task, items in evals.items():
        kept = [it for it in items if not decontam.overlapping(it, index)]
        dropped[task] = len(items) - len(kept)
        evals[task] = kept

    out = Path(run_dir) / "world"
    by_source: dict[str, list[dict]] = {}
    for d in docs:
        by_source.setdefault(d["source"], []).append(d)
    for source, records in by_source.items():
        _write_jsonl(out / "raw" / f"{source}.jsonl", records)
    _write_jsonl(out / "sft.jsonl", sft)
    _write_jsonl(out / "rankings.jsonl", ranked)
    _write_jsonl(out / "prompts.jsonl", prompts)
    _write_jsonl(out / "library" / "docs.jsonl", articles)
    _write_jsonl(out / "moderation.jsonl", moderation)
    for task, items in evals.items():
        _write_jsonl(out / "eval" / f"{task}.jsonl", items)
    facts = {"seed": seed, "size": size, **{g: [asdict(e) for e in getattr(w, g)] for g in
                                            ("towns", "people", "creatures", "companies", "products", "ghosts")}}
    (out / "facts.json").write_text(json.dumps(facts, ensure_ascii=False, indent=1), encoding="utf-8")
    stats = {
        "documents": {s: len(r) for s, r in sorted(by_source.items())},
        "characters": {s: sum(len(d["text"]) for d in r) for s, r in sorted(by_source.items())},
        "noise": {k: sum(1 for d in docs if (d["noise"] or {}).get("type") == k)
                  for k in ("ad", "boilerplate", "spam", "near_duplicate", "mojibake")},
        "documents_with_copies": sum(1 for d in docs if "dup_group" in d),
        "duplicate_groups": len({d["dup_group"] for d in docs if "dup_group" in d}),
        "sft": {t: sum(1 for e in sft if e["task"] == t) for t in sorted({e["task"] for e in sft})},
        "rankings": len(ranked), "labeler_agreement": labeler_agreement(ranked), "prompts": len(prompts),
        "moderation": {label: sum(r["label"] == label for r in moderation) for label in ("harmful", "benign")},
        "library": {"documents": len(articles), "withheld": sum(a["withheld"] for a in articles)},
        "eval": {t: len(v) for t, v in evals.items()}, "eval_dropped_by_decontamination": dropped,
    }
    (out / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=1), encoding="utf-8")
    mark_complete(out, settings=world_settings(seed, size, labeler_noise, labelers), stage="world")
    return out
