"""The cleaning run: raw documents -> normalised, line-cleaned, quality-filtered, PII-scrubbed, deduplicated,
decontaminated documents, with what each stage removed and why.

    chatforge clean --run runs/demo [--data my.jsonl ...] [--workers 2] [--t2s]
    chatforge clean --run runs/mine --source web=crawl/:0.6 --source books=books.parquet:0.4 --text-column text
    chatforge clean report --run runs/demo

Writes `RUN/clean/docs.jsonl` (the kept documents: id, text, source, lang), `RUN/clean/stats.json` (the
funnel: documents, characters and — when the run has a tokenizer — tokens in / out per stage, removals per reason, dedup parameters, and — when the
input carries the world's `noise` labels — precision and recall of line removal and near-duplicate
detection) and `RUN/clean/removed/<stage>.jsonl` (up to 20 examples per reason).

With `--reference FILES`, a GPT-3-style quality classifier (reference text vs this input) keeps documents
by Pareto sampling after the rules. Stages 1-4 are a pure function over a batch of documents (`clean_batch`), run on a local process pool;
deduplication and decontamination keep global state and run in order in this process.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from chatforge import ChatforgeError
from chatforge.data.clean.decontam import build_eval_index, contaminated, eval_items
from chatforge.data.clean.dedup import Deduplicator
from chatforge.data.clean.docfilter import document_reason
from chatforge.data.clean.ingest import parse_source, read_sources
from chatforge.data.clean.lines import clean_lines
from chatforge.data.clean.pii import scrub_pii
from chatforge.data.clean.text import normalise
from chatforge.run import stage_dir

STAGES = ["input", "normalise", "lines", "quality", "pii", "classifier", "dedup", "decontam", "mix"]
EXAMPLES_PER_REASON = 20


_TOKENIZERS: dict[str, object] = {}


def token_lengths(tokenizer_dir: str, texts: list[str]) -> list[int]:
    """Token count of each text with the run's tokenizer (loaded once per process)."""
    if tokenizer_dir not in _TOKENIZERS:
        from chatforge.tokenizer import Tokenizer

        _TOKENIZERS[tokenizer_dir] = Tokenizer.load(tokenizer_dir)
    return [len(ids) for ids in _TOKENIZERS[tokenizer_dir].encode_batch(texts)] if texts else []


def clean_batch(docs: list[dict], t2s: bool = False, tokenizer_dir: str | None = None,
                keep_fullwidth_punct: bool = False) -> dict:
    """Normalise, drop ad/boilerplate lines, apply the document rules and scrub PII: -> {"kept": [...],
    "removed_docs": [(doc, stage, reason)], "removed_lines": [(doc id, line, reason)], "chars": {...},
    "tokens": {...} (with a tokenizer), "pii": Counter}."""
    convert = None
    if t2s:
        from chatforge.data.clean.text import opencc_t2s

        convert = opencc_t2s()
    kept, removed_docs, removed_lines = [], [], []
    pii = Counter()
    texts: dict[str, list[str]] = defaultdict(list)  # each stage's output, for its token count
    for doc in docs:
        texts["input"].append(doc["text"])
        text = normalise(doc["text"], convert, keep_fullwidth_punct)
        texts["normalise"].append(text)
        text, gone = clean_lines(text)
        removed_lines += [(doc.get("id"), line, reason) for line, reason in gone]
        if not text:
            removed_docs.append((doc, "lines", "empty_after_line_removal"))
            continue
        texts["lines"].append(text)
        reason = document_reason(text)
        if reason is not None:
            removed_docs.append((doc, "quality", reason))
            continue
        texts["quality"].append(text)
        text, counts = scrub_pii(text)
        pii.update(counts)
        texts["pii"].append(text)
        kept.append({**doc, "text": text})
    chars = Counter({s: sum(map(len, ts)) for s, ts in texts.items()})
    tokens = Counter()
    if tokenizer_dir:  # most texts pass a stage unchanged: encode each distinct text once
        distinct = list({t for ts in texts.values() for t in ts})
        n = dict(zip(distinct, token_lengths(tokenizer_dir, distinct)))
        tokens = Counter({s: sum(n[t] for t in ts) for s, ts in texts.items()})
        for d in kept:
            d["_tokens"] = n[d["text"]]  # later stages only drop documents: they sum these
    return {"kept": kept, "removed_docs": removed_docs, "removed_lines": removed_lines, "chars": chars,
            "tokens": tokens, "pii": pii}


def _tally(chars: Counter, tokens: Counter, stage: str, docs: list[dict]) -> None:
    """Characters and tokens left after a stage that only drops (or repeats) whole documents."""
    chars[stage] = sum(len(d["text"]) for d in docs)
    tokens[stage] = sum(d.get("_tokens", 0) for d in docs)


def read_documents(paths: list[str], text_column: str = "text") -> list[dict]:
    """Documents of these files / folders as one unnamed source (see ingest.read_sources)."""
    return read_sources({"": paths}, text_column)[0]


def mix_sources(docs: list[dict], weights: dict[str, float], seed: int = 0) -> tuple[list[dict], dict]:
    """GPT-3-style mixture: source i gets weight_i / sum(weights) of the characters (the total kept as it
    is), so a small high-quality source is repeated (epochs > 1) and a large one subsampled (epochs < 1).
    Whole copies first, then a seeded sample for the fraction; the result is shuffled."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[dict]] = defaultdict(list)
    for d in docs:
        by[d.get("source", "")].append(d)
    missing = sorted(set(by) - set(weights))
    if missing:
        raise ChatforgeError(f"sources {missing} have no weight; give every --source a weight or none")
    total = sum(len(d["text"]) for d in docs)
    wsum = sum(weights[s] for s in by)
    out, table = [], {}
    for s, items in by.items():
        chars = sum(len(d["text"]) for d in items)
        epochs = (weights[s] / wsum) * total / chars
        whole, frac = int(epochs), epochs - int(epochs)
        picked = items * whole + [items[i] for i in sorted(rng.choice(len(items), round(frac * len(items)),
                                                                     replace=False))]
        out += picked
        table[s] = {"docs": len(items), "chars": chars, "weight": weights[s],
                    "share": round(weights[s] / wsum, 4), "epochs": round(epochs, 3), "docs_out": len(picked)}
    order = rng.permutation(len(out))
    return [out[i] for i in order], table


def clean_settings(data: list[str] | None = None, t2s: bool = False, threshold: float = 0.8,
                   reference: list[str] | None = None, alpha: float = 9.0, seed: int = 0,
                   sources: list[str] | None = None, text_column: str = "text",
                   keep_fullwidth_punct: bool = False) -> dict:
    """Everything that decides the cleaned output (not workers or batch size): the stage's identity."""
    return {"data": data, "t2s": t2s, "threshold": threshold, "reference": reference, "alpha": alpha, "seed": seed,
            "sources": sources, "text_column": text_column, "keep_fullwidth_punct": keep_fullwidth_punct}


def run_clean(run: str | Path, data: list[str] | None = None, workers: int | None = None, t2s: bool = False,
              threshold: float = 0.8, batch_size: int = 2000, reference: list[str] | None = None,
              alpha: float = 9.0, seed: int = 0, sources: list[str] | None = None, text_column: str = "text",
              keep_fullwidth_punct: bool = False) -> dict:
    """`data`: files / folders read as they are (each document keeps its own `source`); `sources`:
    NAME=PATH[:WEIGHT] specs — with weights, the output is mixed by them (`mix_sources`). `reference`:
    files of trusted text; when given, a quality classifier (reference vs this input) keeps documents by
    GPT-3's Pareto rule with `alpha`. Token counts per stage need the run's tokenizer: without one the
    column is empty until the data stage fills it in (`add_token_counts`)."""
    from chatforge.run import mark_complete

    settings = clean_settings(data, t2s, threshold, reference, alpha, seed, sources, text_column,
                              keep_fullwidth_punct)
    run = Path(run)
    world = stage_dir(run, "world")
    spec: dict[str, list[str]] = defaultdict(list)
    weights: dict[str, float] = {}
    for s in sources or []:
        name, path, weight = parse_source(s)
        spec[name].append(path)
        if weight is not None:
            weights[name] = weight
    if not spec:
        spec[""] = data or [str(world / "raw")]
    elif data:
        spec[""] += data
    docs, skipped = read_sources(dict(spec), text_column)
    out = stage_dir(run, "clean")
    (out / "removed").mkdir(parents=True, exist_ok=True)
    (out / "stage.json").unlink(missing_ok=True)  # incomplete until this run has written everything
    t0 = time.perf_counter()
    workers = workers or max(1, min(4, (os.cpu_count() or 2)))
    batches = [docs[i:i + batch_size] for i in range(0, len(docs), batch_size)]
    timing: dict[str, float] = {}
    tok_dir = stage_dir(run, "tokenizer")
    tok_dir = str(tok_dir) if (tok_dir / "tokenizer.json").is_file() else None  # token counts when one exists
    if workers > 1 and len(batches) > 1:
        with ProcessPoolExecutor(workers) as pool:
            n = len(batches)
            results = list(pool.map(clean_batch, batches, [t2s] * n, [tok_dir] * n, [keep_fullwidth_punct] * n))
    else:
        results = [clean_batch(b, t2s, tok_dir, keep_fullwidth_punct) for b in batches]
    timing["normalise..pii"] = time.perf_counter() - t0

    kept = [d for r in results for d in r["kept"]]
    chars = sum((r["chars"] for r in results), Counter())
    tokens = sum((r["tokens"] for r in results), Counter())
    pii = sum((r["pii"] for r in results), Counter())
    removed_docs = [x for r in results for x in r["removed_docs"]]
    removed_lines = [x for r in results for x in r["removed_lines"]]

    classifier_stats = None
    if reference:
        from chatforge.data.clean.quality import QualityClassifier, pareto_keep

        tq = time.perf_counter()
        refs = [normalise(d["text"]) for d in read_documents(reference)]
        rng = np.random.default_rng(seed)
        raw = [kept[i]["text"] for i in rng.permutation(len(kept))[:max(len(refs), 1000)]]
        clf = QualityClassifier(seed=seed).fit(refs, raw)
        scores = clf.score([d["text"] for d in kept])
        keep = pareto_keep(scores, alpha, seed)
        for d, s, k in zip(kept, scores, keep):
            if not k:
                removed_docs.append(({**d, "quality_score": float(s)}, "classifier", "pareto"))
        kept = [d for d, k in zip(kept, keep) if k]
        classifier_stats = {"reference_docs": len(refs), "raw_docs": len(raw), "alpha": alpha,
                            "keep_ratio": round(float(keep.mean()), 4) if len(keep) else None,
                            "score_quartiles": [round(float(q), 3) for q in np.quantile(scores, [0.25, 0.5, 0.75])]
                            if len(scores) else None}
        timing["classifier"] = time.perf_counter() - tq
    _tally(chars, tokens, "classifier", kept)

    t1 = time.perf_counter()
    dedup = Deduplicator(threshold=threshold)
    reached_dedup = {d["id"] for d in kept}
    unique, dup_of, near_jaccard = [], {}, []
    for d in kept:
        verdict = dedup.check(d["id"], d["text"])
        if verdict is None:
            unique.append(d)
        else:
            dup_of[d["id"]] = (verdict[0], verdict[1])
            removed_docs.append((d, "dedup", verdict[0]))
            if verdict[0] == "near":
                near_jaccard.append(verdict[2])  # the exact shingle Jaccard the check computed
    # the share of near-duplicate verdicts at exact Jaccard >= threshold: 1.0 unless the check is bypassed
    verified = sum(j >= threshold for j in near_jaccard)
    _tally(chars, tokens, "dedup", unique)
    timing["dedup"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    index = build_eval_index(eval_items(world / "eval")) if (world / "eval").is_dir() else set()
    final = []
    for d in unique:
        if index and contaminated(d["text"], index):
            removed_docs.append((d, "decontam", "13gram_overlap_with_eval"))
        else:
            final.append(d)
    _tally(chars, tokens, "decontam", final)
    timing["decontam"] = time.perf_counter() - t2
    mixture = None
    if weights:
        final, mixture = mix_sources(final, weights, seed)
    _tally(chars, tokens, "mix", final)  # what the shards get: sources repeated / sampled by weight

    counts = {"input": len(docs)}
    by_stage = Counter(stage for _, stage, _ in removed_docs)
    left = len(docs)
    for stage in STAGES[1:-1]:
        left -= by_stage.get(stage, 0)
        counts[stage] = left
    counts["mix"] = len(final)
    reasons: dict[str, Counter] = defaultdict(Counter)
    for _, stage, reason in removed_docs:
        reasons[stage][reason] += 1
    for _, _, reason in removed_lines:
        reasons["lines (removed lines)"][reason] += 1
    stats = {"documents": counts, "characters": {s: chars.get(s, 0) for s in STAGES},
             "tokens": {s: tokens.get(s, 0) for s in STAGES} if tok_dir else None,
             "removed": {k: dict(v) for k, v in reasons.items()}, "pii_scrubbed": dict(pii),
             "skipped_records": dict(skipped), "mixture": mixture,
             "classifier": classifier_stats,
             "dedup": {**dedup.params, "near_verdicts": len(near_jaccard), "lsh_candidates": dedup.candidates,
                       "lsh_candidates_below_threshold": dedup.rejected,
                       "exact_jaccard_precision": round(verified / len(near_jaccard), 4) if near_jaccard else None},
             "decontam": {"eval_ngrams": len(index), "n": 13},
             "workers": workers, "seconds": {k: round(v, 2) for k, v in timing.items()},
             "labels": score_against_labels(docs, removed_lines, dup_of, reached_dedup, keep_fullwidth_punct)}
    _write_examples(out / "removed", removed_docs, removed_lines)
    tmp = out / "docs.jsonl.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for d in final:
            f.write(json.dumps({k: d[k] for k in ("id", "text", "source", "lang") if k in d}, ensure_ascii=False) + "\n")
    tmp.replace(out / "docs.jsonl")
    if tok_dir:
        from chatforge.tokenizer import Tokenizer

        stats["tokenizer_sha256"] = Tokenizer.load(tok_dir).fingerprint()
    (out / "stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False))
    if not final:  # the funnel and the examples are written: they say why
        gone = ", ".join(f"{r} {n}" for stage in reasons.values() for r, n in stage.items())
        raise ChatforgeError(f"cleaning kept none of the {len(docs)} document(s) ({gone}); see {out}/removed/ — "
                             f"`chatforge pipeline --no-clean` (or `data --raw`) uses the text as it is")
    mark_complete(out, settings=settings, stage="clean", documents=len(final))
    return stats


def add_token_counts(run: Path, workers: int | None = None) -> dict:
    """Fill in the funnel's token column with the run's current tokenizer. In the pipeline the cleaning runs
    before the tokenizer exists (the tokenizer learns from the cleaned text), so once it does, the cleaning
    is run again with the recorded settings — deterministic, so the documents must come out identical
    (checked) — this time counting tokens at every stage. Costs one more cleaning pass (~10 s on the world)."""
    import hashlib

    from chatforge.run import read_stage_info
    from chatforge.tokenizer import Tokenizer

    out = stage_dir(run, "clean")
    stats = json.loads((out / "stats.json").read_text())
    sha = Tokenizer.load(stage_dir(run, "tokenizer")).fingerprint()
    if stats.get("tokens") and stats.get("tokenizer_sha256") == sha:
        return stats

    def digest() -> str:
        return hashlib.sha256((out / "docs.jsonl").read_bytes()).hexdigest()

    before = digest()
    stats = run_clean(run, workers=workers, **read_stage_info(out)["settings"])
    if digest() != before:
        raise ChatforgeError(f"{out}/docs.jsonl changed when cleaning again with the same settings; the cleaning "
                             f"is not deterministic here — re-run the pipeline from the clean stage (--force)")
    return stats


def score_against_labels(docs: list[dict], removed_lines: list, dup_of: dict, reached_dedup: set,
                         keep_fullwidth_punct: bool = False) -> dict | None:
    """Precision / recall of line removal (ads, boilerplate) and of deduplication against the world's labels;
    None when the input has no labels. Reposts (`noise.type == near_duplicate`) give the repost recall;
    `dup_group` (every exact or near copy, the world's own included, by exact Jaccard — world/duplicates.py)
    gives the precision of the near-duplicate verdicts and the recall of all copies."""
    labelled = [d for d in docs if "noise" in d]
    if not labelled:
        return None
    added = {(d["id"], normalise(line, None, keep_fullwidth_punct)) for d in labelled if d["noise"] and d["noise"].get("type") in ("ad", "boilerplate")
             for line in d["noise"].get("added_lines", [])}
    # lines taken out of documents that are noise through and through (spam, mojibake) are not scored: every
    # line of those is noise, and the document rules drop them whole anyway
    whole_noise = {d["id"] for d in labelled if d["noise"] and d["noise"].get("type") in ("spam", "mojibake")}
    removed = {(doc_id, line) for doc_id, line, _ in removed_lines if doc_id not in whole_noise}
    tp = len(added & removed)
    dups = {d["id"] for d in labelled if d["noise"] and d["noise"].get("type") == "near_duplicate"}
    found = dups & set(dup_of)  # a repost of a Chinese text without "." is an exact copy: found either way
    near = {k: v for k, v in dup_of.items() if v[0] == "near"}

    def ratio(a, b):
        return round(a / b, 4) if b else None

    out = {"line_removal": {"labelled": len(added), "removed": len(removed), "correct": tp,
                            "precision": ratio(tp, len(removed)), "recall": ratio(tp, len(added))},
           "reposts": {"labelled": len(dups), "found": len(found), "recall": ratio(len(found), len(dups))}}
    group = {d["id"]: d["dup_group"] for d in labelled if "dup_group" in d}
    if group:  # worlds made before the copies were labelled have reposts only
        right = sum(1 for k, (_, first) in near.items() if k in group and group[k] == group.get(first))
        sizes = Counter(group[i] for i in reached_dedup if i in group)  # copies left when dedup starts
        should = sum(n - 1 for n in sizes.values())
        caught = sum(1 for k, (_, first) in dup_of.items() if k in group and group[k] == group.get(first))
        out["near_duplicates"] = {"verdicts": len(near), "correct": right, "precision": ratio(right, len(near)),
                                  "copies_reaching_dedup": should, "removed": caught, "recall": ratio(caught, should)}
    return out


def _write_examples(folder: Path, removed_docs: list, removed_lines: list) -> None:
    per: dict[str, list] = defaultdict(list)
    seen: Counter = Counter()
    for doc, stage, reason in removed_docs:
        if seen[(stage, reason)] < EXAMPLES_PER_REASON:
            seen[(stage, reason)] += 1
            per[stage].append({"reason": reason, "id": doc.get("id"), "text": doc["text"][:500]})
    for doc_id, line, reason in removed_lines:
        if seen[("lines", reason)] < EXAMPLES_PER_REASON:
            seen[("lines", reason)] += 1
            per["lines"].append({"reason": reason, "id": doc_id, "line": line})
    for stage, recs in per.items():
        (folder / f"{stage}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs),
                                                encoding="utf-8")


def format_report(stats: dict) -> str:
    """The funnel: documents and characters left after each stage, removals by reason, label scores."""
    toks = stats.get("tokens")
    lines = [f"{'stage':<10} {'docs':>9} {'chars':>12} {'tokens':>11}  removed"]
    for s in STAGES:
        if s not in stats["documents"]:  # a funnel written before this stage existed
            continue
        why = ", ".join(f"{r} {n}" for r, n in sorted(stats["removed"].get(s, {}).items(), key=lambda x: -x[1]))
        if s == "mix":
            why = "repeated / sampled by source weight (below)" if stats.get("mixture") else "no weights: as is"
        if s == "lines":
            why = ", ".join(f"{r} {n} lines" for r, n in stats["removed"].get("lines (removed lines)", {}).items()) + \
                  (f"; {why}" if why else "")
        tok = f"{toks[s]:>11,}" if toks else f"{'-':>11}"
        lines.append(f"{s:<10} {stats['documents'][s]:>9,} {stats['characters'][s]:>12,} {tok}  {why}")
    if stats.get("skipped_records"):
        lines.append("records skipped while reading: " + ", ".join(f"{k} {v}" for k, v in stats["skipped_records"].items()))
    if stats.get("mixture"):
        lines.append(f"{'source':<14} {'docs':>8} {'chars':>11} {'weight':>7} {'share':>6} {'epochs':>7}")
        for s, m in stats["mixture"].items():
            lines.append(f"{s:<14} {m['docs']:>8,} {m['chars']:>11,} {m['weight']:>7g} {m['share']:>6.1%} {m['epochs']:>7.2f}")
    if stats.get("classifier"):
        c = stats["classifier"]
        lines.append(f"quality classifier: {c['reference_docs']} reference vs {c['raw_docs']} raw documents; Pareto "
                     f"alpha {c['alpha']} kept {100 * c['keep_ratio']:.1f}% (score quartiles {c['score_quartiles']})")
    if stats.get("pii_scrubbed"):
        lines.append("PII scrubbed: " + ", ".join(f"{k} {v}" for k, v in stats["pii_scrubbed"].items()))
    d = stats["dedup"]
    lines.append(f"near-dup: MinHash {d['num_perm']} perms, {d['shingle']} shingles, {d['bands']} bands x {d['rows']} "
                 f"rows, threshold {d['threshold']}")
    lines[-1] += (f"; {d['near_verdicts']} near verdicts, {100 * d['exact_jaccard_precision']:.1f}% of them at exact "
                  f"Jaccard >= {d['threshold']}" if d.get("exact_jaccard_precision") is not None else "")
    if d.get("lsh_candidates"):
        lines[-1] += (f"; LSH candidates {d['lsh_candidates']:,}, {d['lsh_candidates_below_threshold']:,} of them "
                      f"rejected by the exact check")
    lab = stats.get("labels")
    if lab:
        lr, rp = lab["line_removal"], lab["reposts"]
        lines.append(f"vs the world's labels: ad/boilerplate lines precision {lr['precision']} recall {lr['recall']} "
                     f"({lr['correct']}/{lr['labelled']}); labelled reposts found {rp['found']}/{rp['labelled']} "
                     f"(recall {rp['recall']})")
        nd = lab.get("near_duplicates")
        if nd:
            lines.append(f"vs the world's copy groups (exact Jaccard): near-duplicate verdicts precision {nd['precision']} "
                         f"({nd['correct']}/{nd['verdicts']}); copies removed {nd['removed']}/{nd['copies_reaching_dedup']} "
                         f"(recall {nd['recall']})")
    return "\n".join(lines)


def data_report(run: Path) -> str:
    """`chatforge data report`: the cleaning funnel (if `chatforge clean` ran) and the token shards."""
    from chatforge.data.shards import read_meta

    parts = []
    stats_file = stage_dir(run, "clean") / "stats.json"
    if stats_file.is_file():
        parts.append("cleaning (clean/stats.json):\n" + format_report(json.loads(stats_file.read_text())))
    else:
        parts.append(f"cleaning: not run (chatforge clean --run {run})")
    data = stage_dir(run, "data")
    if (data / "meta.json").is_file():
        meta = read_meta(data)
        parts.append(f"token shards (data/meta.json): {meta['documents']:,} documents; train {meta['tokens']['train']:,} "
                     f"+ val {meta['tokens']['val']:,} tokens ({meta['dtype']})")
    else:
        parts.append(f"token shards: not built (chatforge data --run {run})")
    return "\n\n".join(parts)
