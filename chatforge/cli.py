"""The `chatforge` command: parses arguments and dispatches to the stage modules (no logic here).

    chatforge pipeline --run runs/demo --preset tiny      # every stage, skipping completed ones
    chatforge world     --run runs/demo --size tiny
    chatforge tokenizer --run runs/demo --vocab-size 4096
    chatforge clean     --run runs/demo       # raw text -> cleaned, deduplicated documents; `clean report`
    chatforge data      --run runs/demo       # -> token shards (of the cleaned text once cleaned); `data report`
    chatforge data      --run runs/mine --source web=crawl/:0.6 --source books=books.parquet:0.4   # clean, mix, shard
    chatforge pretrain  --run runs/demo --max-steps 600
    chatforge chat      --run runs/demo --stage base
    chatforge eval      --run runs/demo --stage base
    chatforge export    --run runs/demo --stage base --format hf --out exported/
    chatforge sample    --run runs/demo --stage base "The town of"
    chatforge moderation train --run runs/demo [--data mine.jsonl]; chatforge moderation check --run runs/demo "text"
    torchrun --nproc_per_node=2 -m chatforge.cli pretrain --run-dir runs/demo --dist fsdp
"""

from __future__ import annotations

import argparse
import json
import sys

from chatforge import ChatforgeError

TRAIN_FLAGS = {  # flag -> (TrainConfig field, type)
    "--max-steps": ("max_steps", int), "--batch-size": ("batch_size", int), "--grad-accum": ("grad_accum", int),
    "--global-batch": ("global_batch", int), "--checkpoint-format": ("checkpoint_format", str),
    "--seq-len": ("seq_len", int), "--lr": ("lr", float), "--warmup-steps": ("warmup_steps", int),
    "--eval-every": ("eval_every", int), "--save-every": ("save_every", int), "--log-every": ("log_every", int),
    "--seed": ("seed", int), "--device": ("device", str), "--dtype": ("dtype", str), "--dist": ("dist", str),
}


def _add_run(p: argparse.ArgumentParser) -> None:
    # --run-dir is the spelling to use after `torchrun ... -m chatforge.cli`: torchrun's own parser
    # rejects a bare --run as an ambiguous abbreviation of its --run-path.
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="run directory, e.g. runs/demo")


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help="named preset (default: the run's, else tiny)")
    for flag, (name, typ) in TRAIN_FLAGS.items():
        p.add_argument(flag, dest=f"train_{name}", type=typ, default=None, help=f"override train.{name}")
    p.add_argument("--compile", dest="train_compile", action="store_const", const=True, default=None,
                   help="torch.compile the model")
    p.add_argument("--activation-checkpointing", dest="train_activation_checkpointing", action="store_const",
                   const=True, default=None, help="recompute activations in backward to save memory")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override any model./train./sft./rm./dpo./ppo. field, e.g. --set model.n_layer=6 --set sft.max_steps=100")


def _add_clean_flags(p) -> None:
    p.add_argument("--data", nargs="+", default=None,
                   help=".jsonl/.parquet/.txt/.html files or folders (default: world/raw)")
    p.add_argument("--workers", type=int, default=None, help="local processes for the per-document stages")
    p.add_argument("--t2s", action="store_true", help="convert Traditional to Simplified Chinese (needs opencc)")
    p.add_argument("--threshold", type=float, default=0.8, help="near-duplicate Jaccard threshold")
    p.add_argument("--reference", nargs="+", default=None,
                   help="trusted text (.jsonl/.txt): trains the quality classifier, keeps documents by Pareto rule")
    p.add_argument("--alpha", type=float, default=9.0, help="the Pareto rule's alpha (GPT-3: 9)")
    p.add_argument("--source", action="append", default=None, metavar="NAME=PATH[:WEIGHT]",
                   help="a named source (jsonl/parquet/txt/html file or folder); with weights, the output is mixed")
    p.add_argument("--text-column", default="text", help="the text field of jsonl / column of parquet")
    p.add_argument("--keep-fullwidth-punct", action="store_true",
                   help="keep Chinese full-width punctuation (，：？！…) that NFKC would make ASCII")


def _clean_from_args(run, args) -> dict:
    from chatforge.data.clean.run import run_clean

    return run_clean(run, args.data, args.workers, args.t2s, args.threshold, reference=args.reference,
                     alpha=args.alpha, sources=args.source, text_column=args.text_column,
                     keep_fullwidth_punct=args.keep_fullwidth_punct)


def _preset_name(args) -> str:
    """--preset, else the preset the run was made with, else tiny."""
    from pathlib import Path

    from chatforge.run import read_run_info

    return args.preset or read_run_info(Path(args.run)).get("preset", "tiny")


def _resolve_preset(args, command: str = "pretrain"):
    """Preset with command-line overrides applied; returns (name, preset, model_overrides).

    Flags like --max-steps and `--set train.X=` set the training settings of the command's own stage
    (pre-training for `pretrain` and `pipeline`, SFT for `sft`); `--set sft.X=` sets SFT's anywhere."""
    from chatforge.config import apply_overrides, get_preset, parse_set_args

    name = _preset_name(args)
    preset = get_preset(name)
    sets = parse_set_args(args.set)
    flags = {k.removeprefix("train_"): v for k, v in vars(args).items() if k.startswith("train_") and v is not None}
    stages = ("sft", "rm", "dpo")  # stages with their own training settings in the preset (--set sft.X=, ...)
    if command in stages:
        setattr(preset, command, apply_overrides(getattr(preset, command),
                                                 _accum_wins({**sets["train"], **sets[command], **flags}), "train"))
    else:
        preset.train = apply_overrides(preset.train, _accum_wins({**sets["train"], **flags}), "train")
    for stage in stages:
        if stage != command:
            setattr(preset, stage, apply_overrides(getattr(preset, stage), _accum_wins(sets[stage]), stage))
    return name, preset, sets["model"]


def _accum_wins(overrides: dict) -> dict:
    """A grad_accum given by the user replaces the preset's global batch (which would otherwise decide it)."""
    if "grad_accum" in overrides and "global_batch" not in overrides:
        return {**overrides, "global_batch": 0}
    return overrides


def _stage_train_config(args, stage: str):
    """The training settings of a post-training stage; it trains the shape it starts from, so no model.*."""
    _, preset, model_over = _resolve_preset(args, stage)
    if model_over:
        raise ChatforgeError(f"{stage} trains the shape it starts from; --set model.* is not accepted here")
    return getattr(preset, stage)


def _sft_options(args, pipeline: bool = False):
    """SFT options from the flags; in the pipeline SFT starts from its own pre-trained model (which
    --init-from already seeded) and reads --sft-data (--data there is the pre-training corpus)."""
    from chatforge.train.sft import SFTOptions

    return SFTOptions(data=args.sft_data if pipeline else args.data, on_bad=args.on_bad_record,
                      ptx_fraction=args.ptx_fraction, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                      select=not args.no_select, init_from=None if pipeline else args.init_from,
                      **({} if args.select_limit is None else {"select_limit": args.select_limit}))


def _add_sft_flags(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        p.add_argument("--data", nargs="+", default=None,
                       help="conversation .jsonl files/folders (messages or prompt/completion; default world/sft.jsonl)")
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"],
                   help="a malformed / over-long conversation: stop with its file:line, or skip and count it")
    p.add_argument("--ptx-fraction", type=float, default=0.0,
                   help="share of each batch's rows taken from pre-training shards (InstructGPT-style ptx)")
    p.add_argument("--lora-rank", type=int, default=0, help="train LoRA adapters of this rank (0: full fine-tune)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default 2 x rank)")
    p.add_argument("--no-select", action="store_true",
                   help="keep the last checkpoint instead of the best one on the instruction-following suite")
    p.add_argument("--select-limit", type=int, default=None,
                   help="dev items per task when selecting (default: train/sft.py's SELECT_LIMIT, 100)")


def _add_ppo_flags(p: argparse.ArgumentParser) -> None:
    """One flag per PPOConfig field (--kl-coef, --ptx-coef, --iterations, ...), defaults from the dataclass."""
    from dataclasses import fields

    from chatforge.train.ppo import PPOConfig

    for f in fields(PPOConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            p.add_argument(flag, dest=f"ppo_{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            typ = float if f.name == "kl_target" else type(f.default)
            p.add_argument(flag, dest=f"ppo_{f.name}", type=typ, default=f.default, help=f"default {f.default}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chatforge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pipeline", help="run every stage in order, skipping completed ones")
    _add_run(p)
    _add_train_flags(p)
    p.add_argument("--until", default=None, help="stop after this stage")
    p.add_argument("--force", action="store_true", help="re-run stages even if complete")
    p.add_argument("--data", nargs="+", default=None, help="your own .jsonl/.txt corpus instead of the world")
    p.add_argument("--no-clean", action="store_true",
                   help="skip the cleaning stage: the tokenizer and pre-training read the raw text")
    p.add_argument("--workers", type=int, default=None, help="local processes for the cleaning stage")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--world-size", default=None, choices=["tiny", "small", "medium"],
                   help="the built-in world's size (default: the preset's)")
    p.add_argument("--sft-data", nargs="+", default=None,
                   help="conversations for SFT (default world/sft.jsonl and the preset's grounded demonstrations)")
    p.add_argument("--grounded", type=int, default=None, metavar="N",
                   help="extra grounded demonstrations for SFT, written to world/grounded.jsonl (default: the "
                        "preset's; 0 = none)")
    _add_sft_flags(p, data=False)
    p.add_argument("--init-from", default=None, metavar="HF_DIR",
                   help="start from a local HF checkpoint (its tokenizer and weights) instead of from scratch")
    p.add_argument("--with-feedback", action="store_true",
                   help="the flywheel: export the run's feedback store and retrain rm -> ppo (and dpo) with it")
    p.add_argument("--feedback-stages", default="rm,ppo", help="rm,ppo (default) or sft,rm,ppo")
    p.add_argument("--feedback-weight", type=int, default=5, help="each feedback record counts this many times")
    p.add_argument("--feedback-db", default=None, help="feedback store URL (default sqlite in RUN/feedback/)")

    p = sub.add_parser("world", help="generate the built-in bilingual world")
    _add_run(p)
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--size", default=None, help="tiny (default) | small | medium")
    p.add_argument("--labeler-noise", type=float, default=1.3,
                   help="sigma of each simulated labeler's grade noise (1.3 gives ~73%% pairwise agreement)")
    p.add_argument("--labelers", type=int, default=5, help="number of simulated labelers")
    p.add_argument("--grounded", type=int, default=0, metavar="N",
                   help="also write world/grounded.jsonl: N more reading demonstrations for SFT (GPU presets); "
                        "on a run whose world exists, only that file is written")

    p = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer")
    _add_run(p)
    p.add_argument("--vocab-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--preset", default=None)
    p.add_argument("--data", nargs="+", default=None, help=".jsonl/.txt files or folders (default: clean/docs.jsonl once the run is cleaned, else world/raw)")

    p = sub.add_parser("data", help="token shards of the run's text (`data report`: the data funnel); with "
                                    "--clean / --source it cleans and mixes the raw text first")
    p.add_argument("action", nargs="?", default="build", choices=["build", "report"])
    _add_run(p)
    p.add_argument("--val-every", type=int, default=50, help="every N-th document goes to validation")
    p.add_argument("--clean", action="store_true", help="clean --data / --source / world/raw first (as `chatforge "
                                                          "clean`), then shard the cleaned documents")
    p.add_argument("--raw", action="store_true", help="shard world/raw even if the run has been cleaned")
    p.add_argument("--preset", default=None, help="vocabulary size of the tokenizer trained when the run has none")
    _add_clean_flags(p)

    p = sub.add_parser("clean", help="clean raw text: normalise, line/doc filters, PII, dedup, decontamination")
    p.add_argument("action", nargs="?", default="run", choices=["run", "report"])
    _add_run(p)
    _add_clean_flags(p)

    p = sub.add_parser("pretrain", help="generative pre-training on the token shards")
    _add_run(p)
    _add_train_flags(p)
    p.add_argument("--init-from", default=None, metavar="HF_DIR",
                   help="continue pre-training a local HF checkpoint (the run's data must use its tokenizer)")
    p.add_argument("--force", action="store_true", help="discard an existing checkpoint and start over")

    p = sub.add_parser("sft", help="instruction tuning on conversations (loss on assistant turns only)")
    _add_run(p)
    _add_train_flags(p)
    _add_sft_flags(p)
    p.add_argument("--init-from", default=None, metavar="HF_DIR",
                   help="start from a local HF checkpoint instead of the run's pre-trained model")
    p.add_argument("--force", action="store_true", help="discard an existing checkpoint and start over")

    p = sub.add_parser("rm", help="reward model from ranked answers (`rm score` scores conversations)")
    p.add_argument("action", nargs="?", default="train", choices=["train", "score"])
    _add_run(p)
    _add_train_flags(p)
    p.add_argument("--data", nargs="+", default=None,
                   help="rankings / chosen-rejected .jsonl files (default world/rankings.jsonl)")
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    p.add_argument("--from", dest="init", default="sft", choices=["sft", "base"],
                   help="the run's model stage to start from (default sft)")
    p.add_argument("--init-from", default=None, metavar="HF_DIR", help="start from a local HF checkpoint")
    p.add_argument("--force", action="store_true", help="discard an existing checkpoint and start over")
    p.add_argument("--input", default=None, help="rm score: jsonl of conversations ({'messages': [...]})")
    p.add_argument("--output", default=None, help="rm score: write the records with a 'score' field here")

    p = sub.add_parser("dpo", help="direct preference optimisation from the rankings (no reward model)")
    _add_run(p)
    _add_train_flags(p)
    p.add_argument("--data", nargs="+", default=None, help="rankings / chosen-rejected .jsonl (default the world's)")
    p.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    p.add_argument("--beta", type=float, default=0.1, help="strength of the implicit KL to the reference")
    p.add_argument("--from", dest="init", default="sft", choices=["sft", "base"])
    p.add_argument("--force", action="store_true", help="discard an existing checkpoint and start over")

    p = sub.add_parser("ppo", help="RLHF: PPO against the reward model with a KL penalty to the SFT model")
    _add_run(p)
    _add_ppo_flags(p)
    p.add_argument("--force", action="store_true", help="discard an existing checkpoint and start over")

    p = sub.add_parser("eval", help="score a model stage on the world's held-out capability suite")
    _add_run(p)
    p.add_argument("--stage", default="base", help="a model stage, or several to compare: sft,ppo,dpo")
    p.add_argument("--tasks", default=None, help="comma-separated subset, e.g. knowledge_qa,icl")
    p.add_argument("--limit", type=int, default=None, help="at most N items per task")
    p.add_argument("--self-consistency", type=int, default=0, metavar="K",
                   help="also score the arithmetic tasks by the majority answer of K samples (rows <task>@scK)")
    p.add_argument("--retrieval", action="store_true",
                   help="also answer the retrieval tasks from the run's index (rows <task>@rag, with citation rates)")
    p.add_argument("-k", type=int, default=3, help="with --retrieval: passages per question")
    p.add_argument("--calculator", action="store_true",
                   help="also score the arithmetic tasks with the calculator tool answering <<calc: ...>> (rows <task>@calc)")
    p.add_argument("--moderation", action="store_true",
                   help="also score refusals with the run's moderator screening questions and answers (refusal+moderation)")

    p = sub.add_parser("report", help="the run's report card: eval/report.md with plots of losses, rewards, "
                                      "capabilities, the data funnel and throughput")
    _add_run(p)

    p = sub.add_parser("chat", help="chat with a model in the terminal (streaming, history, /commands)")
    _add_run(p)
    p.add_argument("--stage", default="sft", help="model stage to talk to (default sft; base works too)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--retrieval", action="store_true", help="answer from the run's retrieval index, listing sources")
    p.add_argument("-k", type=int, default=3, help="with --retrieval: passages per question")
    p.add_argument("--calculator", action="store_true", help="answer the model's <<calc: EXPR>> calls with the "
                   "calculator tool")
    p.add_argument("--cot", action="store_true", help="ask for step-by-step reasoning with every question")

    p = sub.add_parser("serve", help="OpenAI-compatible API + web chat page + feedback store")
    _add_run(p)
    p.add_argument("--stage", default="sft", help="model stage to serve (default sft)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on the API")
    p.add_argument("--device", default="cpu", help="cpu | cuda (bf16 and CUDA-graph decode on cuda)")
    p.add_argument("--max-batch", type=int, default=16, help="rows decoded together (continuous batching)")
    p.add_argument("--max-queue", type=int, default=64, help="sequences that may wait for a row; more -> 429")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20)
    p.add_argument("--model-name", default=None, help="the model id clients see (default chatforge-RUN-STAGE)")
    p.add_argument("--db", default=None, help="feedback store SQLAlchemy URL (default sqlite in RUN/feedback/)")
    p.add_argument("--no-feedback", action="store_true", help="no feedback store (API only)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of the engine (default on cpu: all cores but one, left to HTTP)")
    p.add_argument("--engine-in-thread", action="store_true",
                   help="run the engine in a thread of the server process instead of its own process")
    p.add_argument("--retrieval", action="store_true",
                   help="answer chat requests from the run's retrieval index (`chatforge index`) unless a request "
                        "says \"retrieval\": false; without it a request can still ask with \"retrieval\": true")
    p.add_argument("--retrieval-k", type=int, default=3, help="passages put into each grounded prompt")
    p.add_argument("--calculator", action="store_true",
                   help="answer the model's <<calc: EXPR>> calls in chat requests (a request's \"calculator\": "
                        "true / false overrides)")
    p.add_argument("--moderation", choices=["off", "input", "output", "both"], default=None,
                   help="moderate chat questions / answers (finish_reason content_filter); default: both when the "
                        "run has a trained moderator (`chatforge moderation train`), else off")
    p.add_argument("--moderation-threshold", type=float, default=None,
                   help="flag at this score (default: the threshold chosen on the moderator's validation split)")
    p.add_argument("--moderation-allow-optout", action="store_true",
                   help="let a request switch moderation off with \"moderation\": false (else that is a 400)")

    p = sub.add_parser("task", help="NLP by instruction on the chat model: sentiment, extract, translate, summarize "
                                    "(stdin lines or JSON lines with text -> JSON lines)")
    p.add_argument("name", choices=["sentiment", "extract", "translate", "summarize"])
    _add_run(p)
    p.add_argument("--stage", default="sft", help="model stage (default sft)")
    p.add_argument("--fields", default=None, help="extract: comma-separated keys (default time,place,person)")
    p.add_argument("--to", choices=["en", "zh"], default=None, help="translate: target language (default: the other)")
    p.add_argument("--input", default=None, help="a file instead of stdin")

    p = sub.add_parser("index", help="the retrieval index: add / delete documents, search passages, list")
    actions = p.add_subparsers(dest="action", required=True)
    for name, what in (("add", "files / folders (.jsonl .txt .md .html .pdf)"), ("delete", "document ids or source files"),
                       ("search", "the query"), ("list", None)):
        q = actions.add_parser(name)
        _add_run(q)
        if what:
            q.add_argument("items", nargs="*" if name == "add" else "+", help=what)
    actions.choices["search"].add_argument("-k", type=int, default=3, help="passages to return")
    from chatforge.retrieval.grounding import PASSAGE_CUTOFF

    actions.choices["search"].add_argument("--min-ratio", type=float, default=0.0,
                                           help="leave out passages scoring under this share of the best one's "
                                                f"score (chat, serve and eval use {PASSAGE_CUTOFF})")
    actions.choices["add"].add_argument("--max-chars", type=int, default=600,
                                        help="passage length in characters (a new index only)")
    actions.choices["add"].add_argument("--embedder", default=None, metavar="FOLDER|none",
                                        help="a local HF encoder folder for dense retrieval (remembered); none: BM25 only")
    actions.choices["add"].add_argument("--pooling", choices=["mean", "cls"], default="mean",
                                        help="with --embedder: mean of the token states, or the first token's (BGE)")
    actions.choices["add"].add_argument("--query-prefix", default="", help="with --embedder: e.g. 'query: ' for E5")
    actions.choices["add"].add_argument("--passage-prefix", default="", help="with --embedder: e.g. 'passage: '")

    p = sub.add_parser("moderation", help="the safety classifier: `train` it (world data + your jsonl), `check` texts")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("train", help="train RUN/moderation/ from world/moderation.jsonl and --data files")
    _add_run(q)
    q.add_argument("--data", nargs="+", default=[], metavar="FILE",
                   help='extra JSON lines {"text", "label": "harmful"|"benign"|1|0}')
    q.add_argument("--extra-weight", type=float, default=20.0, help="how many times each --data record counts")
    q = actions.add_parser("check", help="print each text's score and verdict")
    _add_run(q)
    q.add_argument("texts", nargs="+")
    q.add_argument("--threshold", type=float, default=None, help="flag at this score (default: the validated one)")

    p = sub.add_parser("feedback", help="the data flywheel: export user feedback as SFT and RM training data")
    p.add_argument("action", choices=["export", "stats"])
    _add_run(p)
    p.add_argument("--db", default=None, help="feedback store URL (default sqlite in RUN/feedback/)")
    p.add_argument("--out", default=None, help="output folder (default RUN/feedback/export)")

    p = sub.add_parser("export", help="export a model stage as a Hugging Face folder")
    _add_run(p)
    p.add_argument("--stage", default="base")
    p.add_argument("--format", default="hf", choices=["hf"])
    p.add_argument("--drop-copy-head", action="store_true",
                   help="export a model with a copy head without it (HF has no such architecture)")
    p.add_argument("--out", required=True, help="output folder")

    p = sub.add_parser("sample", help="print a continuation from a trained model")
    _add_run(p)
    p.add_argument("--stage", default="base")
    p.add_argument("prompt", nargs="?", default="")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interactive", action="store_true", help="read prompts from the terminal")
    p.add_argument("--few-shot", default=None, metavar="FILE",
                   help="JSON lines of {question, answer}: the prompt is a question answered after these examples")
    return parser


def _cmd_sample(args) -> None:
    from chatforge.engine import Engine
    from chatforge.model import load_model
    from chatforge.run import model_dir, require_run
    from chatforge.sample import continue_text
    from chatforge.tokenizer import Tokenizer

    folder = model_dir(require_run(args.run), args.stage)
    if args.few_shot:  # the shots and arguments are checked before the model is loaded
        from chatforge.prompting import FEW_SHOT_STOPS, few_shot_text, read_shots

        shots = read_shots(args.few_shot)
        if args.interactive or not args.prompt:
            raise ChatforgeError("--few-shot answers the question given as the prompt (not --interactive)")
    engine = Engine(load_model(folder), Tokenizer.load(folder))
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    if args.few_shot:
        print(continue_text(engine, few_shot_text(shots, args.prompt), stop=FEW_SHOT_STOPS, **kw).strip())
        return
    if not args.interactive:
        print(args.prompt + continue_text(engine, args.prompt, **kw))
        return
    if not sys.stdin.isatty():
        print(f"model ready at {folder}; to talk to it, run in a terminal: "
              f".venv/bin/chatforge sample --run {args.run} --stage {args.stage} --interactive")
        return
    print(f"model: {folder}. Type the start of a text; the model continues it. Ctrl-D to quit.")
    while True:
        try:
            prompt = input("> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        print(prompt + continue_text(engine, prompt, **kw))


def _cmd_data(args) -> None:
    """`chatforge data`: token shards; with --clean / --source the raw text is cleaned (and mixed) first, and a
    tokenizer is trained on the cleaned documents when the run has none."""
    from pathlib import Path

    from chatforge.config import get_preset
    from chatforge.data.clean.run import format_report
    from chatforge.data.shards import run_data_stage
    from chatforge.run import is_complete, read_stage_info, require_run, stage_dir
    from chatforge.tokenizer import run_tokenizer_stage

    clean_first = args.clean or bool(args.source)
    if clean_first and args.raw:
        raise ChatforgeError("--raw shards the uncleaned text; it cannot go with --clean / --source")
    if clean_first:
        run = Path(args.run)
        run.mkdir(parents=True, exist_ok=True)
        print(format_report(_clean_from_args(run, args)), flush=True)
        tok = stage_dir(run, "tokenizer")
        if not is_complete(tok):
            vocab = get_preset(_preset_name(args)).vocab_size
            print(f"the run has no tokenizer: training one ({vocab} tokens) on the cleaned documents", flush=True)
            run_tokenizer_stage(run, vocab, cleaned=True)
        elif not read_stage_info(tok).get("settings", {}).get("cleaned"):
            print(f"note: {tok} was trained on other text than these cleaned documents; `chatforge tokenizer "
                  f"--run {run}` retrains it on them", flush=True)
        meta = run_data_stage(run, None, args.val_every, cleaned=True)
    else:
        meta = run_data_stage(require_run(args.run), args.data, args.val_every, cleaned=False if args.raw else None)
    print(f"token shards: {meta['tokens']} tokens ({meta['dtype']}), {meta['documents']} documents")


def _cmd_task(args) -> None:
    """`chatforge task NAME`: one JSON line out per input line (tasks.py)."""
    from pathlib import Path

    from chatforge.engine import Engine
    from chatforge.model import load_model
    from chatforge.run import model_dir, require_run
    from chatforge.tasks import read_inputs, run_task, task_spec
    from chatforge.tokenizer import Tokenizer

    spec = task_spec(args.name, [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None,
                     args.to)
    if args.input:
        try:
            lines = Path(args.input).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ChatforgeError(f"{args.input}: cannot read ({e})") from None
    else:
        lines = sys.stdin.read().splitlines()
    texts = read_inputs(lines)
    if not texts:
        raise ChatforgeError("no input: give text lines on stdin or --input FILE")
    folder = model_dir(require_run(args.run), args.stage)
    engine = Engine(load_model(folder).eval(), Tokenizer.load(folder))
    for r in run_task(engine, spec, texts):
        print(json.dumps(r, ensure_ascii=False), flush=True)


def _cmd_index(args) -> None:
    """`chatforge index add|delete|search|list`: the run's retrieval index (retrieval/index.py)."""
    from pathlib import Path

    from chatforge.retrieval.chunks import read_documents
    from chatforge.retrieval.index import RetrievalIndex
    from chatforge.run import require_run

    run = require_run(args.run)
    idx = RetrievalIndex.load(run)
    if args.action == "add":
        if not args.items and args.embedder is None:
            raise ChatforgeError("index add: give files / folders to add (or --embedder to change the encoder)")
        if not idx.docs:
            idx.max_chars = args.max_chars
        if args.embedder is not None:
            from chatforge.retrieval.dense import EmbedderSpec

            idx.set_embedder(None if args.embedder == "none" else EmbedderSpec(
                str(Path(args.embedder).resolve()), args.pooling, args.query_prefix, args.passage_prefix))
        docs, skipped = read_documents(args.items) if args.items else ([], {})
        counts = idx.add(docs)
        idx.save()
        dense = f"; dense: {idx.dense.spec.path}" if idx.dense is not None else ""
        print(f"index: {counts['added']} added, {counts['updated']} updated, {counts['unchanged']} unchanged"
              + (f"; skipped {dict(skipped)}" if skipped else "")
              + f" -> {len(idx.docs)} documents, {sum(d['chunks'] for d in idx.docs.values())} passages in {idx.folder}"
              + dense)
    elif args.action == "delete":
        gone = idx.delete(args.items)
        idx.save()
        print(f"index: removed {len(gone)} document(s) -> {len(idx.docs)} left")
    elif args.action == "search":
        hits = idx.search(" ".join(args.items), args.k, args.min_ratio)
        if not hits:
            print("no passage matches" if idx.docs else f"the index is empty: chatforge index add --run {run} FILES")
        for n, h in enumerate(hits, 1):
            print(f"[{n}] {h['title']} ({h['chunk_id']}, score {h['score']:.2f})\n    " + h['text'][:300].replace(chr(10), ' '))
    else:
        for d in idx.docs.values():
            print(f"{d['doc_id']}\t{d['chunks']} passages\t{d['title']}\t{d['source']}")
        print(f"{len(idx.docs)} documents")


def _cmd_serve(args) -> None:
    import uvicorn

    from chatforge.serve.app import ServeOptions, build_server

    opts = ServeOptions(api_key=args.api_key, max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit,
                        max_body_bytes=args.max_body_bytes, retrieval=args.retrieval, retrieval_k=args.retrieval_k,
                        calculator=args.calculator,
                        moderation=args.moderation, moderation_threshold=args.moderation_threshold,
                        moderation_optout=args.moderation_allow_optout)
    if args.model_name:
        opts.model_name = args.model_name
    server = build_server(args.run, args.stage, args.device, args.db, args.max_batch, opts,
                          feedback=not args.no_feedback, engine_in_thread=args.engine_in_thread,
                          threads=args.threads)
    where = f"http://{args.host}:{args.port}"
    print(f"serving {opts.model_name} ({args.stage} of {args.run}) on {where}  — chat page: {where}/  "
          f"API: {where}/v1  (Ctrl-C stops)", flush=True)
    uvicorn.run(server.app, host=args.host, port=args.port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pipeline":
            from chatforge.pipeline import FeedbackMix, run_pipeline

            name, preset, model_over = _resolve_preset(args)
            from chatforge.config import apply_overrides, parse_set_args
            from chatforge.train.ppo import PPOConfig

            preset.world_size = args.world_size or preset.world_size
            if args.grounded is not None:
                if args.grounded < 0:
                    raise ChatforgeError(f"--grounded {args.grounded}: expected a count >= 0")
                preset.grounded = args.grounded

            ppo = apply_overrides(PPOConfig(), parse_set_args(args.set)["ppo"], "ppo")
            run_pipeline(args.run, name, preset, until=args.until, force=args.force, data=args.data,
                         model_overrides=model_over, seed=args.world_seed, init_from=args.init_from,
                         sft=_sft_options(args, pipeline=True), ppo=ppo,
                         feedback=FeedbackMix(tuple(s.strip() for s in args.feedback_stages.split(",") if s.strip()),
                                              args.feedback_weight, args.feedback_db) if args.with_feedback else None,
                         clean=not args.no_clean, workers=args.workers)
            from chatforge.run import stage_dir

            base, sft = stage_dir(args.run, "pretrain"), stage_dir(args.run, "sft")
            if (sft / "model.safetensors").exists():
                print(f"model ready: {sft}  (try: chatforge chat --run {args.run})")
            elif (base / "model.safetensors").exists():
                print(f"model ready: {base}  (try: chatforge sample --run {args.run} --stage base \"...\")")
        elif args.command == "world":
            from chatforge.run import is_complete, stage_dir
            from chatforge.world import generate_world
            from chatforge.world.generate import write_grounded

            if args.grounded < 0:  # before a world is generated for nothing
                raise ChatforgeError(f"--grounded must be >= 0 (got {args.grounded})")
            folder = stage_dir(args.run, "world")
            generate = not (args.grounded and is_complete(folder))  # else: add to the world the run trained on
            if generate:
                folder = generate_world(args.run, seed=args.seed if args.seed is not None else 0,
                                        size=args.size or "tiny", labeler_noise=args.labeler_noise,
                                        labelers=args.labelers)
                print(f"world written to {folder}")
            if args.grounded:
                out = write_grounded(folder, args.grounded, seed=args.seed, size=args.size)
                print(f"{args.grounded:,} grounded demonstrations written to {out}")
            if generate:
                print((folder / "stats.json").read_text(encoding="utf-8"))
        elif args.command == "tokenizer":
            from chatforge.config import get_preset
            from chatforge.tokenizer import run_tokenizer_stage

            vocab = args.vocab_size if args.vocab_size is not None else get_preset(_preset_name(args)).vocab_size
            stats = run_tokenizer_stage(args.run, vocab, args.data)
            print(json.dumps(stats, indent=2, ensure_ascii=False))
        elif args.command == "data" and args.action == "report":
            from chatforge.data.clean.run import data_report
            from chatforge.run import require_run

            print(data_report(require_run(args.run)))
        elif args.command == "data":
            _cmd_data(args)
        elif args.command == "pretrain":
            from chatforge.run import is_main_process
            from chatforge.train.pretrain import run_pretrain

            _, preset, model_over = _resolve_preset(args)
            if args.init_from:
                from chatforge.init_from import ensure_imported

                ensure_imported(args.run, args.init_from)
            summary = run_pretrain(args.run, preset.model, preset.train, model_over, fresh=args.force,
                                   init_from=bool(args.init_from))
            if is_main_process():
                print(f"pretrain done: step {summary['step']}, loss {summary.get('train/loss', float('nan')):.4f}, "
                      f"val loss {summary.get('val/loss', float('nan')):.4f} -> {summary['model_dir']}")
        elif args.command == "sft":
            from chatforge.run import is_main_process
            from chatforge.train.sft import run_sft

            tcfg = _stage_train_config(args, "sft")
            summary = run_sft(args.run, tcfg, _sft_options(args), fresh=args.force)
            if is_main_process():
                print(f"sft done: step {summary['step']}, val loss {summary.get('val/loss', float('nan')):.4f}, "
                      f"kept the step-{summary['selected_step']} checkpoint -> {summary['model_dir']}")
        elif args.command == "rm" and args.action == "score":
            from chatforge.train.rm import score_file

            if not args.input:
                raise ChatforgeError("rm score needs --input conversations.jsonl")
            scores = score_file(args.run, args.input, args.output)
            if not args.output:
                print("\n".join(f"{s:.4f}" for s in scores))
            else:
                print(f"{len(scores)} scores written to {args.output}")
        elif args.command == "rm":
            from chatforge.run import is_main_process
            from chatforge.train.rm import RMOptions, run_rm

            tcfg = _stage_train_config(args, "rm")
            summary = run_rm(args.run, tcfg, RMOptions(data=args.data, on_bad=args.on_bad_record,
                                                            init=args.init, init_from=args.init_from),
                             fresh=args.force)
            if is_main_process():
                acc = summary["eval"]["pairwise_accuracy"]
                shown = f"{100 * acc['overall']['accuracy']:.1f}%" if acc else "n/a (no held-out comparisons)"
                print(f"rm done: step {summary['step']}, held-out pairwise accuracy {shown} -> {summary['model_dir']}")
        elif args.command == "dpo":
            from chatforge.run import is_main_process
            from chatforge.train.dpo import DPOOptions, run_dpo

            tcfg = _stage_train_config(args, "dpo")
            summary = run_dpo(args.run, tcfg, DPOOptions(data=args.data, on_bad=args.on_bad_record,
                                                               beta=args.beta, init=args.init), fresh=args.force)
            if is_main_process():
                acc = summary["eval"]["heldout_preference_accuracy"]["accuracy"]
                shown = f"{100 * acc:.1f}%" if acc is not None else "n/a"
                print(f"dpo done: step {summary['step']}, held-out preference accuracy {shown} -> {summary['model_dir']}")
        elif args.command == "ppo":
            from chatforge.train.ppo import PPOConfig, run_ppo

            cfg = PPOConfig(**{k.removeprefix("ppo_"): v for k, v in vars(args).items() if k.startswith("ppo_")})
            r = run_ppo(args.run, cfg, fresh=args.force)
            from chatforge.run import is_main_process

            if is_main_process():
                print(f"ppo done: held-out RM reward sft {r['sft_reward']:.3f} -> ppo {r['ppo_reward']:.3f}, "
                      f"win rate of ppo over sft {100 * r['ppo_win_rate_vs_sft']:.1f}% -> {r['model_dir']}")
        elif args.command == "eval":
            from chatforge.eval.suite import compare_table, format_table, run_suite

            tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
            stages = [s.strip() for s in args.stage.split(",") if s.strip()]
            results = [run_suite(args.run, s, tasks, args.limit, self_consistency=args.self_consistency,
                                 retrieval_k=args.k if args.retrieval else 0, calculator=args.calculator,
                                 moderation=args.moderation)
                       for s in stages]
            print(compare_table(results) if len(results) > 1 else format_table(results[0]))
        elif args.command == "report":
            from chatforge.report import write_report

            print(f"report written to {write_report(args.run)} (plots in its plots/ folder)")
        elif args.command == "chat":
            from chatforge.chat import ChatSession, run_terminal_chat
            from chatforge.engine import Engine, SamplingParams
            from chatforge.model import load_model
            from chatforge.run import model_dir, require_run
            from chatforge.tokenizer import Tokenizer

            folder = model_dir(require_run(args.run), args.stage)
            params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                                    seed=args.seed)
            params.validate()
            session = ChatSession(Engine(load_model(folder), Tokenizer.load(folder)), args.system, params)
            if args.retrieval:
                from chatforge.retrieval.index import RetrievalIndex

                session.index, session.k = RetrievalIndex.load_nonempty(args.run), args.k
            session.calculator, session.cot = args.calculator, args.cot
            run_terminal_chat(session)
        elif args.command == "clean":
            from chatforge.data.clean.run import format_report
            from chatforge.run import require_run, stage_dir

            run = require_run(args.run)
            if args.action == "report":
                f = stage_dir(run, "clean") / "stats.json"
                if not f.is_file():
                    raise ChatforgeError(f"{f}: no cleaning run yet; run `chatforge clean --run {run}` first")
                print(format_report(json.loads(f.read_text())))
            else:
                print(format_report(_clean_from_args(run, args)))
        elif args.command == "serve":
            _cmd_serve(args)
        elif args.command == "index":
            _cmd_index(args)
        elif args.command == "task":
            _cmd_task(args)
        elif args.command == "moderation" and args.action == "train":
            from chatforge.safety.moderation import train_moderation

            meta = train_moderation(args.run, args.data, extra_weight=args.extra_weight)
            v = meta["validation"] or {}
            print(f"moderation: {meta['train']['n']} training texts, threshold {meta['threshold']:.3f}; validation "
                  f"precision {v.get('precision')} recall {v.get('recall')} false-positive rate "
                  f"{v.get('false_positive_rate')} -> {args.run}/moderation")
        elif args.command == "moderation":
            from chatforge.safety.moderation import Moderator

            mod = Moderator.load(args.run, args.threshold)
            for text, score in zip(args.texts, mod.score(args.texts)):
                print(f"{score:.3f}\t{'FLAGGED' if score >= mod.threshold else 'ok'}\t{text}")
        elif args.command == "feedback":
            from chatforge.run import require_run
            from chatforge.serve.flywheel import export_feedback
            from chatforge.serve.store import FeedbackStore, default_db_url

            if args.action == "stats":
                print(json.dumps(FeedbackStore(args.db or default_db_url(require_run(args.run))).counts(), indent=2))
            else:
                stats = export_feedback(require_run(args.run), args.db, args.out)
                print(f"feedback: {stats['turns']} turns, {stats['answers']} answers -> {stats['sft_records']} "
                      f"demonstrations ({stats['sft_corrections']} corrections, {stats['sft_upvoted']} upvoted) and "
                      f"{stats['rm_records']} ranking records ({stats['rank_user_rankings']} rankings, "
                      f"{stats['rank_corrections']} corrections, {stats['rank_ratings']} from ratings) in {stats['out']}")
        elif args.command == "export":
            from chatforge.hf import export_hf
            from chatforge.run import model_dir, require_run

            out = export_hf(model_dir(require_run(args.run), args.stage), args.out, args.drop_copy_head)
            print(f"exported {args.stage} as a Hugging Face folder: {out} "
                  f"(AutoModelForCausalLM.from_pretrained({str(out)!r}))")
        elif args.command == "sample":
            _cmd_sample(args)
    except ChatforgeError as e:
        print(f"chatforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
