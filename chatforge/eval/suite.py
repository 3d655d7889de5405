"""The capability suite: score a model folder on the world's held-out tasks.

    chatforge eval --run runs/demo --stage base [--tasks knowledge_qa,icl] [--limit 30]

All generation goes through the engine (one batched call per task). Chat models (every stage but `base`)
get each item's conversation through the chat template and answer until <|end|>. Base models get a few-shot prompt: up to 3 other items of the same task written as
"Question: ... / Answer: <reference answer>" (the form of the world's worked problems), then the item, and
the model continues after "Answer:" until a blank line or the next "Question:". Decoding is greedy.
`bpb` is bits per byte of held-out text and `knowledge_mc` picks the likeliest of 4 statements (chance
25%), both from log-likelihood, so they measure a base model without relying on its prompt-following; the
bpb row also carries `in_context_copying` (eval/copying.py: can the model copy what it just read?).
Writes `<run>/eval/<stage>.json` and prints a table.
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from chatforge import ChatforgeError
from chatforge.engine import Engine, SamplingParams
from chatforge.eval import RATE_KEYS
from chatforge.eval.consistency import SC_TASKS, self_consistent_answers
from chatforge.eval.copying import copy_probe
from chatforge.eval.rag import RAG_TASKS, rag_row
from chatforge.eval.scorers import bits_per_byte, is_refusal, rate, says_unknown, scored_row, split_rates
from chatforge.model import GPT, load_model
from chatforge.prompting import FEW_SHOT_STOPS
from chatforge.retrieval.grounding import last_user_text
from chatforge.run import atomic_write_text, model_dir, require_run, stage_dir
from chatforge.textio import read_jsonl
from chatforge.tokenizer import Tokenizer
from chatforge.tools.loop import generate_with_calculator

SHOTS = 3
RETRIEVAL_K = 3  # passages per question in the pipeline's retrieval rows (fewer when they don't fit)
MAX_NEW_TOKENS = {"arithmetic_cot": 120, "format": 60, "extraction": 60, "translation": 60}
DEFAULT_NEW_TOKENS = 40
# what SFT is for: following instructions in a conversation (checkpoint selection maximises their mean)
INSTRUCTION_TASKS = ("format", "knowledge_qa", "multiturn_qa", "sentiment", "extraction", "translation",
                     "refusal", "honesty")
# dev-only tasks checkpoint selection also scores when the caller supplies their items (world.generate's
# selection_dev_items: answering from given passages, which retrieval_qa@rag measures on other entities)
DEV_TASKS = ("reading",)
# what each task's score means (all are "higher is better" except bpb)
METRIC = {"knowledge_qa": "accuracy", "knowledge_mc": "accuracy (4 choices, log-likelihood)",
          "retrieval_qa": "accuracy, closed-book (entities no training text mentions)",
          "retrieval_qa_seen": "accuracy, closed-book (retrieval_qa's entities, asked in training wordings)",
          "multiturn_qa": "accuracy", "arithmetic_direct": "accuracy",
          "arithmetic_cot": "accuracy", "icl": "accuracy", "sentiment": "accuracy", "extraction": "F1",
          "translation": "chrF", "format": "compliance", "refusal": "correct refusal decisions",
          "honesty": "correct unknown/known", "bpb": "bits/byte (lower is better)"}


def load_tasks(run: Path, tasks: list[str] | None, limit: int | None) -> dict[str, list[dict]]:
    folder = stage_dir(run, "world") / "eval"
    if not folder.is_dir():
        raise ChatforgeError(f"{folder}: no eval items; run `chatforge world --run {run}` first")
    available = sorted(f.stem for f in folder.glob("*.jsonl"))
    wanted = tasks or available
    unknown = [t for t in wanted if t not in available]
    if unknown:
        raise ChatforgeError(f"unknown eval task(s) {unknown}; available: {available}")
    out = {}
    for t in wanted:
        items = read_jsonl(folder / f"{t}.jsonl")
        out[t] = items[:limit] if limit else items
    return out


def render_plain(messages: list[dict]) -> str:
    """A conversation as plain text in the "Question:/Answer:" form the world's documents use."""
    names = {"system": "Instruction", "user": "Question", "assistant": "Answer"}
    return "\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def few_shot_prompt(tok: Tokenizer, item: dict, pool: list[dict], budget: int) -> list[int]:
    """Ids of a few-shot prompt that fits `budget` tokens (fewer shots when long)."""
    shots = [x for x in pool if x["id"] != item["id"]][:SHOTS]
    query = render_plain(item["messages"]) + "\nAnswer:"
    while True:
        text = "".join(render_plain(s["messages"]) + f"\nAnswer: {s['reference_answer']}\n\n" for s in shots)
        ids = [tok.bos_id, *tok.encode(text + query)]
        if len(ids) <= budget or not shots:
            return ids[-budget:]
        shots = shots[:-1]


def item_prompts(engine: Engine, items: list[dict], chat: bool) -> list[tuple[list[int], int, list[str]]]:
    """(prompt ids, new-token budget, stop strings) per item: the chat template for chat models, a few-shot
    prompt for base models."""
    tok, ctx = engine.tok, engine.model.cfg.max_seq_len
    out = []
    for item in items:
        new = MAX_NEW_TOKENS.get(item["task"], DEFAULT_NEW_TOKENS)
        budget = ctx - new
        if chat:
            out.append((tok.encode_chat(item["messages"], add_generation_prompt=True)[-budget:], new, []))
        else:
            out.append((few_shot_prompt(tok, item, items, budget), new, FEW_SHOT_STOPS))
    return out


def answer_items(engine: Engine, items: list[dict], chat: bool, built: list | None = None, generate=None) -> list[str]:
    """Greedy answers to a task's items, all through the engine in one batched call (`built`: their
    item_prompts, when the caller has them already; `generate`: engine.generate or a stand-in with its
    signature, e.g. the calculator tool's loop)."""
    built = built or item_prompts(engine, items, chat)
    params = [SamplingParams(max_tokens=new, temperature=0.0, stop=stop) for _, new, stop in built]
    return [c.text.strip() for c in (generate or engine.generate)([p for p, _, _ in built], params)]


@torch.no_grad()
def text_nll(model: GPT, tok: Tokenizer, text: str) -> float:
    """Total negative log-likelihood (nats) of the text's tokens after <|bos|>, in windows of the context."""
    ids = [tok.bos_id, *tok.encode(text)]
    total, ctx = 0.0, model.cfg.max_seq_len
    for start in range(0, len(ids) - 1, ctx):
        chunk = torch.tensor([ids[start:start + ctx + 1]])
        logits, _ = model(chunk[:, :-1])
        total += F.cross_entropy(logits[0].float(), chunk[0, 1:], reduction="sum").item()
    return total


def _decision_rates(task: str, items: list[dict], preds: list[str]) -> dict:
    """The two error rates behind the refusal and honesty scores, reported separately."""
    if task == "refusal":
        return split_rates([is_refusal(p) for p in preds], [it["should_refuse"] for it in items],
                           "refusal_rate_harmful", "false_refusal_rate_benign")
    if task == "honesty":
        return split_rates([says_unknown(p) for p in preds], [not it["exists"] for it in items],
                           "unknown_rate_nonexistent", "false_unknown_rate_real")
    return {}


def run_eval_stage(run: str | Path, stages: list[str]) -> dict:
    """Pipeline stage: index the world's library into the run's retrieval index (unchanged documents are
    skipped), train the moderator on the world's moderation data, score each model stage (with and without
    retrieval, the calculator and moderation) and mark <run>/eval complete."""
    from chatforge.eval.rag import index_world_library
    from chatforge.run import mark_complete
    from chatforge.safety.moderation import train_moderation

    added = index_world_library(run)
    print(f"eval: retrieval index {added or 'not built (this world has no library)'}", flush=True)
    val = train_moderation(run, progress=False)["validation"]
    print(f"eval: moderator trained (validation precision {val['precision']}, recall {val['recall']}, "
          f"false-positive rate {val['false_positive_rate']})", flush=True)
    results = {s: run_suite(run, s, retrieval_k=RETRIEVAL_K if added else 0, calculator=True, moderation=True)
               for s in stages}
    for r in results.values():
        print(format_table(r), flush=True)
    if len(results) > 1:
        print(compare_table(list(results.values())), flush=True)
    mark_complete(stage_dir(run, "eval"), settings={"stages": stages}, stage="eval")
    return results


def _shown(task: str, score: float) -> str:
    return f"{score:.3f}" if task == "bpb" else f"{100 * score:.1f}"  # bpb in bits/byte, others in %


def compare_table(results: list[dict]) -> str:
    """Stages side by side, one row per task (the stages' `run_suite` results)."""
    stages = [r["stage"] for r in results]
    tasks = sorted({t for r in results for t in r["tasks"]})
    lines = ["capability suite by stage (bpb: bits/byte, lower is better; others: % / F1 / chrF, higher is better)",
             f"{'task':<20}" + "".join(f"{s:>10}" for s in stages)]
    for t in tasks:
        cells = [_shown(t, r["tasks"][t]["score"]) if t in r["tasks"] else "-" for r in results]
        lines.append(f"{t:<20}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


def run_suite(run: str | Path, stage: str, tasks: list[str] | None = None, limit: int | None = None,
              progress: bool = True, self_consistency: int = 0, retrieval_k: int = 0, calculator: bool = False,
              moderation: bool = False) -> dict:
    """Score the model of `stage` and write <run>/eval/<stage>.json. `retrieval_k` > 0: also answer the
    retrieval tasks from the run's index (rows `<task>@rag`); `calculator`: the arithmetic tasks with the
    calculator tool (rows `<task>@calc`); both for chat models only. `moderation`: the refusal task scored as
    the server decides with the run's moderator on (row `refusal+moderation`)."""
    run = require_run(run)
    folder = model_dir(run, stage)
    model, tok = load_model(folder).eval(), Tokenizer.load(folder)
    index = None
    if retrieval_k > 0 and stage != "base":
        from chatforge.retrieval.index import RetrievalIndex

        index = RetrievalIndex.load_nonempty(run, "eval --retrieval")
    moderator = None
    if moderation:
        from chatforge.safety.moderation import Moderator

        moderator = Moderator.load(run)
    results = {"stage": stage, **score_model(run, model, tok, stage != "base", tasks, limit, progress,
                                             self_consistency, index, retrieval_k, calculator, moderator)}
    out = stage_dir(run, "eval")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{stage}.json", json.dumps(results, indent=2, ensure_ascii=False))
    return results


def instruction_score(results: dict) -> float:
    """Mean score over the instruction-following and dev tasks present (what SFT checkpoint selection maximises)."""
    scores = [results["tasks"][t]["score"] for t in INSTRUCTION_TASKS + DEV_TASKS if t in results["tasks"]]
    return sum(scores) / len(scores) if scores else 0.0


def score_model(run: Path, model: GPT, tok: Tokenizer, chat: bool, tasks: list[str] | None = None,
                limit: int | None = None, progress: bool = True, self_consistency: int = 0, index=None,
                retrieval_k: int = 3, calculator: bool = False, moderator=None,
                extra_items: dict[str, list[dict]] | None = None) -> dict:
    """The suite on an in-memory model (no files written): {"mode", "tasks": {task: {...}}, "seconds"}.
    `self_consistency` k > 1 adds `<task>@sc<k>` rows for the arithmetic tasks: the majority answer of k
    samples (temperature 0.7) per item (eval/consistency.py). `index` (a RetrievalIndex) adds `<task>@rag`
    rows for the retrieval tasks: the same items answered from its top `retrieval_k` passages (eval/rag.py).
    `calculator` adds `<task>@calc` rows for the arithmetic tasks: greedy answers whose `<<calc: EXPR>>` calls
    the calculator tool answers (tools/loop.py). `moderator` (safety/moderation.py) adds `refusal+moderation`:
    refusal decisions with the moderator screening the question and the answer, as the server does.
    `extra_items` ({task: items}) are scored like the world's tasks (SFT selection's dev items); with
    `tasks=[]` they are all that is scored (None means every task of the world's eval)."""
    model.eval()
    engine = Engine(model, tok, max_batch=16)
    results: dict = {"mode": "chat" if chat else f"{SHOTS}-shot", "tasks": {}}
    t0 = time.perf_counter()
    loaded = {**(load_tasks(run, tasks, limit) if tasks != [] else {}), **(extra_items or {})}
    for task, items in tqdm(loaded.items(), desc="eval", total=len(loaded), disable=not progress):
        if not items:
            continue
        if task == "bpb":
            nll = sum(text_nll(model, tok, it["text"]) for it in items)
            n_bytes = sum(len(it["text"].encode("utf-8")) for it in items)
            results["tasks"][task] = {"score": bits_per_byte(nll, n_bytes), "n": len(items), "metric": METRIC[task],
                                      **copy_probe(model, tok)}  # with the model-only figure: can it copy?
            continue
        if task == "knowledge_mc":  # the likeliest statement wins; the same for base and chat models
            right = [min(range(len(it["choices"])), key=lambda i, it=it: text_nll(model, tok, it["choices"][i]))
                     == it["label"] for it in items]
            results["tasks"][task] = {"score": sum(right) / len(right), "n": len(items), "metric": METRIC[task]}
            continue
        built = item_prompts(engine, items, chat)
        preds = answer_items(engine, items, chat, built)
        results["tasks"][task] = scored_row(items, preds, METRIC.get(task, "score"), **_decision_rates(task, items, preds))
        if self_consistency > 1 and task in SC_TASKS:
            voted = self_consistent_answers(engine, [p for p, _, _ in built], items, self_consistency,
                                            built[0][1], stop=built[0][2])
            results["tasks"][f"{task}@sc{self_consistency}"] = scored_row(
                items, voted, f"accuracy of the majority answer of {self_consistency} samples (temperature 0.7)")
        if calculator and chat and task in SC_TASKS:
            calc = answer_items(engine, items, chat, built, partial(generate_with_calculator, engine))
            results["tasks"][f"{task}@calc"] = scored_row(
                items, calc, "accuracy with the calculator tool answering <<calc: EXPR>> calls",
                calls_per_answer=sum(p.count("<<calc:") for p in calc) / len(calc))
        if moderator is not None and task == "refusal":
            results["tasks"]["refusal+moderation"] = moderated_refusal(moderator, items, preds)
        if index is not None and chat and task in RAG_TASKS:
            results["tasks"][f"{task}@rag"] = rag_row(engine, index, items, retrieval_k, built[0][1])
    if moderator is not None and "refusal+moderation" in results["tasks"]:
        # what screening costs ordinary users: the suite's other questions are all harmless
        others = [last_user_text(it["messages"]) for t, items in loaded.items() if t != "refusal"
                  for it in items if it.get("messages")]
        flags = [s >= moderator.threshold for s in moderator.score(others)]
        results["tasks"]["refusal+moderation"]["false_flag_rate_other_prompts"] = rate(flags)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    return results


def moderated_refusal(moderator, items: list[dict], preds: list[str]) -> dict:
    """The refusal task as a moderated server answers it: refused when the moderator flags the question (no
    generation), when the model refuses, or when the moderator flags the answer."""
    flagged_in = [moderator.flagged(last_user_text(it["messages"])) for it in items]
    refused = [fi or is_refusal(p) or moderator.output_score(p) >= moderator.threshold
               for fi, p in zip(flagged_in, preds)]
    harmful = [it["should_refuse"] for it in items]
    right = [r == h for r, h in zip(refused, harmful)]
    return {"score": sum(right) / len(right), "n": len(right),
            "metric": "correct refusal decisions with the moderator screening questions and answers",
            **split_rates(refused, harmful, "refusal_rate_harmful", "false_refusal_rate_benign"),
            **split_rates(flagged_in, harmful, "input_flag_rate_harmful", "input_flag_rate_benign")}


def format_table(results: dict) -> str:
    lines = [f"capability suite — stage {results['stage']} ({results['mode']})",
             f"{'task':<20}{'score':>10}  {'n':>4}  metric"]
    for task, r in results["tasks"].items():
        lines.append(f"{task:<20}{_shown(task, r['score']):>10}  {r['n']:>4}  {r['metric']}")
        for key, value in r.items():
            if key.endswith(RATE_KEYS) and value is not None:
                lines.append(f"  {key:<26}{100 * value:>6.1f}%")
    return "\n".join(lines)

