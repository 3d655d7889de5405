"""Retrieval-augmented rows of the capability suite: the same questions, answered from retrieved passages.

    chatforge eval --run runs/demo --stage sft --retrieval [-k 3]     # rows <task>@rag next to closed-book

For each item of a retrieval task the question is searched in the run's index, the best passages go into
the prompt the way the server and the terminal chat put them (retrieval/grounding.py: the top k, without
those scoring far below the best), and the answer is scored by the task's own scorer. A row also reports,
measured on the same answers:
  retrieval_recall   the passage of the item's gold document was among those in the prompt (when known)
  answers_citing     answers that cite at least one passage in the prompt as [n]
  citation_precision cited passages that contain the gold answer (over all citations made)
  cited_and_right    answers that are right and cite a passage that contains the answer
Passages that don't fit the model's context (with room for the answer) are dropped from the end, the
lowest-ranked first, so a short-context model still sees its best passage whole. `index_world_library`
adds the world's library to the run's index (the pipeline's eval stage calls it).
"""

from __future__ import annotations

from pathlib import Path

from chatforge.engine import Engine, SamplingParams
from chatforge.eval.scorers import contains_match, item_scores, rate, scored_row
from chatforge.retrieval.grounding import PASSAGE_CUTOFF, citations, fit_retrieved

RAG_TASKS = ("retrieval_qa", "retrieval_qa_seen", "knowledge_qa")


def rag_row(engine: Engine, index, items: list[dict], k: int, max_tokens: int) -> dict:
    """Score a task's items with retrieval; -> the suite row (score, n, the rates above, samples)."""
    budget = engine.model.cfg.max_seq_len - max_tokens
    built = [fit_retrieved(index, engine.tok, it["messages"], k, budget) for it in items]
    params = [SamplingParams(max_tokens=max_tokens, temperature=0.0) for _ in items]
    preds = [c.text.strip() for c in engine.generate([ids for ids, _ in built], params)]
    scores = item_scores(items, preds)
    recall, citing, cited_right = [], [], []
    cite_hits = cite_total = 0
    for it, (_, hits), pred, score in zip(items, built, preds, scores):
        if "gold_docs" in it:
            recall.append(any(h["doc_id"] in it["gold_docs"] for h in hits))
        cited = [hits[c["n"] - 1] for c in citations(pred, hits)]
        good = [bool(contains_match(h["text"], it["answers"])) for h in cited]
        citing.append(bool(cited))
        cite_hits, cite_total = cite_hits + sum(good), cite_total + len(good)
        cited_right.append(score > 0 and any(good))
    metric = (f"accuracy with the top {k} retrieved passages in the prompt "
              f"(those within {PASSAGE_CUTOFF:.0%} of the best)")
    row = scored_row(items, preds, metric, scores,
                     retrieval_recall=rate(recall), answers_citing=rate(citing),
                     citation_precision=cite_hits / cite_total if cite_total else None,
                     cited_and_right=rate(cited_right),
                     passages_in_prompt=sum(len(h) for _, h in built) / len(built))
    for sample, (_, hits) in zip(row["samples"], built):
        sample["passages"] = [h["chunk_id"] for h in hits]
    return row


def index_world_library(run: str | Path) -> dict:
    """Add the world's library (world/library/docs.jsonl) to the run's retrieval index; -> the add counts
    (empty when the world predates the library)."""
    from chatforge.retrieval.chunks import read_documents
    from chatforge.retrieval.index import RetrievalIndex
    from chatforge.run import stage_dir

    library = stage_dir(Path(run), "world") / "library" / "docs.jsonl"
    if not library.is_file():
        return {}
    docs, _ = read_documents([library])
    idx = RetrievalIndex.load(run)
    counts = idx.add(docs)
    if counts["added"] or counts["updated"]:  # a second pipeline run finds the library unchanged: nothing to write
        idx.save()
    return counts
