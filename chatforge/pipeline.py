"""The main job: run every stage that exists, in order, skipping the ones already complete.

    chatforge pipeline --run runs/demo --preset tiny [--until pretrain] [--force] [--max-steps N]
    chatforge pipeline --run runs/qwen --init-from /models/Qwen2-0.5B --data corpus.jsonl   # from a checkpoint

Stages: world -> clean -> tokenizer -> data -> pretrain -> sft -> rm -> ppo -> dpo -> eval.
The raw text (the world's, or --data) is cleaned first (`chatforge clean`: filters, PII, dedup,
decontamination; --no-clean skips it), the tokenizer learns from the cleaned text, and the data stage writes
its token shards (and completes the cleaning funnel's token counts, which need the tokenizer).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.config import Preset
from chatforge.run import STAGES, read_stage_info, record_wall_time, stage_dir, write_run_info


def _brief(stage: str, result) -> str:
    """One-line summary of what a stage produced, for the progress log."""
    if stage == "tokenizer" and "chars_per_token" not in result:
        return f" (imported with the model: vocab {result['vocab_size']})"
    if stage == "tokenizer":
        cpt = result["chars_per_token"]
        return f" (vocab {result['vocab_size']}, chars/token: " + ", ".join(f"{k} {v}" for k, v in cpt.items()) + ")"
    if stage == "data":
        return f" (tokens: train {result['train']:,}, val {result['val']:,})"
    if stage == "clean":
        docs, chars = result["documents"], result["characters"]
        text = (f" (documents {docs['input']:,} -> {docs['decontam']:,}, characters {chars['input']:,} -> "
                f"{chars['decontam']:,}")
        labels = result.get("labels") or {}
        if labels.get("near_duplicates"):
            nd, lr = labels["near_duplicates"], labels["line_removal"]
            text += (f"; vs the world's labels: ad/boilerplate lines P {lr['precision']:.2f} R {lr['recall']:.2f}, "
                     f"copies P {nd['precision']:.2f} R {nd['recall']:.2f}")
        return text + ")"
    if stage == "eval":
        return ""  # the tables are printed by the stage
    if stage == "sft":
        return (f" (val loss {result.get('val/loss', float('nan')):.3f}, kept the step-{result.get('selected_step')} "
                f"checkpoint)")
    if stage == "rm":
        acc = (result.get("eval", {}).get("pairwise_accuracy") or {}).get("overall", {}).get("accuracy")
        return f" (held-out pairwise accuracy {100 * acc:.1f}%)" if acc is not None else ""
    if stage == "ppo":
        return (f" (held-out RM reward sft {result['sft_reward']:.2f} -> ppo {result['ppo_reward']:.2f}, "
                f"win rate {100 * result['ppo_win_rate_vs_sft']:.1f}%)")
    if stage == "dpo":
        acc = result.get("eval", {}).get("heldout_preference_accuracy", {}).get("accuracy")
        return f" (held-out preference accuracy {100 * acc:.1f}%)" if acc is not None else ""
    if stage == "pretrain":
        return f" (loss {result.get('train/loss', float('nan')):.3f}, val loss {result.get('val/loss', float('nan')):.3f})"
    return ""


@dataclass
class FeedbackMix:
    """`chatforge pipeline --with-feedback`: which stages retrain with the exported feedback, and how many
    times each feedback record counts (a few hundred user records among thousands of world ones would
    otherwise barely move the model)."""
    stages: tuple[str, ...] = ("rm", "ppo")
    weight: int = 5
    db: str | None = None


def mix_feedback(run: Path, mix: FeedbackMix, sft, rm, dpo) -> str:
    """Export the feedback store and add it to the stages' data; returns the first stage to retrain."""
    from chatforge.serve.flywheel import export_feedback

    unknown = set(mix.stages) - {"sft", "rm", "ppo"}
    if unknown or "rm" not in mix.stages:
        raise ChatforgeError(f"--feedback-stages {','.join(mix.stages)}: use rm,ppo or sft,rm,ppo")
    if mix.weight < 1:
        raise ChatforgeError(f"--feedback-weight {mix.weight}: must be >= 1")
    stats = export_feedback(run, mix.db)
    print(f"[flywheel] feedback: {stats['sft_records']} demonstrations, {stats['rm_records']} ranking records "
          f"(x{mix.weight}) -> {stats['out']}", flush=True)
    if not stats["rm_records"] and not (stats["sft_records"] and "sft" in mix.stages):
        raise ChatforgeError("--with-feedback: the feedback store has no rankings or ratings to learn from yet "
                             "(rate, rank or correct some answers in `chatforge serve` first)")
    out, world = Path(stats["out"]), stage_dir(run, "world")
    rm.data = [str(world / "rankings.jsonl")] + [str(out / "rankings.jsonl")] * mix.weight
    dpo.data = list(rm.data)  # DPO learns from the same rankings
    if "sft" in mix.stages:
        sft.data = list(sft.data or [str(world / "sft.jsonl")]) + [str(out / "sft.jsonl")] * mix.weight
        return "sft"
    return "rm"


def _with_grounded(run: Path, n: int, sft):
    """`sft`, after writing the preset's n grounded demonstrations to world/grounded.jsonl if that file doesn't
    hold n of them yet (deterministic for the world's seed, so a rerun finds the same file and skips SFT)."""
    from chatforge.world.generate import write_grounded

    if n:
        path = stage_dir(run, "world") / "grounded.jsonl"
        if not path.is_file() or sum(1 for _ in path.open(encoding="utf-8")) != n:
            write_grounded(path.parent, n)
            print(f"[sft] {n:,} grounded demonstrations written to {path}", flush=True)
    return sft


def run_pipeline(run: str | Path, preset_name: str, preset: Preset, until: str | None = None,
                 force: bool = False, data: list[str] | None = None, model_overrides: dict | None = None,
                 seed: int = 0, init_from: str | None = None, sft=None, ppo=None,
                 feedback: FeedbackMix | None = None, clean: bool = True, workers: int | None = None) -> dict:
    """Run the stages in order. A complete stage is skipped when it was made with the settings asked for
    now; if they differ, stop with the difference (nothing is overwritten) unless `force`. Once a stage
    runs, every later stage is rebuilt from scratch, since its inputs changed. `init_from` (a local HF
    folder): its tokenizer replaces the trained one and pre-training continues from its weights. `sft`:
    SFTOptions for the instruction-tuning stage (default: the world's demonstrations). `feedback`: the
    flywheel: export the feedback store and retrain its stages (rm -> ppo, dpo; optionally sft) with it.
    `clean`: run the raw text through the cleaning stage (False: tokenizer and data read it raw); `workers`:
    its local processes. Chinese full-width punctuation is kept: the chat data and the eval sets use it, and
    NFKC would teach pre-training ASCII look-alikes the later stages never show."""
    from chatforge.data.clean.run import clean_settings, run_clean
    from chatforge.data.shards import data_settings, run_data_stage
    from chatforge.eval.suite import run_eval_stage
    from chatforge.init_from import import_into_run, init_settings
    from chatforge.tokenizer import Tokenizer, run_tokenizer_stage, tokenizer_settings
    from chatforge.train.dpo import DPOOptions, plan_dpo, run_dpo
    from chatforge.train.ppo import PPOConfig, ppo_settings, run_ppo
    from chatforge.train.pretrain import plan_pretrain, run_pretrain
    from chatforge.train.rm import RMOptions, plan_rm, run_rm
    from chatforge.train.sft import SFTOptions, plan_sft, run_sft
    from chatforge.world import generate_world, world_settings

    if until is not None and until not in STAGES:
        raise ChatforgeError(f"--until {until!r}: expected one of {STAGES}")
    run = Path(run)
    write_run_info(run, preset=preset_name)
    val_every = 50
    sft = sft or SFTOptions()
    if sft.init_from:
        raise ChatforgeError("in the pipeline, SFT starts from the run's pre-trained model; give --init-from "
                             "to the pipeline (it seeds pre-training) instead")
    evaluated = ["base", "sft", "ppo", "dpo"]
    ppo = ppo or PPOConfig()
    rm = RMOptions(on_bad=sft.on_bad)  # the world's rankings, from the SFT model
    dpo = DPOOptions(on_bad=sft.on_bad)
    redo_from = None
    grounded = preset.grounded if not sft.data and not data else 0  # --sft-data given: exactly that data
    if grounded:
        world = stage_dir(run, "world")
        sft.data = [str(world / "sft.jsonl"), str(world / "grounded.jsonl")]
    if feedback is not None:
        redo_from = mix_feedback(run, feedback, sft, rm, dpo)
    cleaning = clean_settings(data=data, keep_fullwidth_punct=True)
    corpus = None if clean else data  # with cleaning, the later stages read clean/docs.jsonl, not --data
    settings = {
        "world": lambda: world_settings(seed, preset.world_size),
        "clean": lambda: cleaning,
        "tokenizer": lambda: init_settings(init_from) if init_from else
        tokenizer_settings(preset.vocab_size, corpus, clean),
        "data": lambda: data_settings(corpus, val_every, Tokenizer.load(stage_dir(run, "tokenizer")), clean),
        "pretrain": lambda: plan_pretrain(run, preset.model, preset.train, model_overrides, bool(init_from))[1],
        "sft": lambda: plan_sft(run, preset.sft, _with_grounded(run, grounded, sft)),
        "rm": lambda: plan_rm(run, preset.rm, rm),
        "ppo": lambda: json.loads(json.dumps(ppo_settings(run, ppo))),
        "dpo": lambda: plan_dpo(run, preset.dpo, dpo),
        "eval": lambda: {"stages": evaluated},
    }
    redo = force
    actions = {
        "world": lambda: str(generate_world(run, seed=seed, size=preset.world_size)),
        "clean": lambda: run_clean(run, workers=workers, **cleaning),
        "tokenizer": lambda: import_into_run(run, init_from) if init_from else
        run_tokenizer_stage(run, preset.vocab_size, corpus, cleaned=clean),
        "data": lambda: run_data_stage(run, corpus, val_every, cleaned=clean)["tokens"],
        "pretrain": lambda: run_pretrain(run, preset.model, preset.train, model_overrides, fresh=redo,
                                         init_from=bool(init_from)),
        "sft": lambda: run_sft(run, preset.sft, _with_grounded(run, grounded, sft), fresh=redo),
        "rm": lambda: run_rm(run, preset.rm, rm, fresh=redo),
        "ppo": lambda: run_ppo(run, ppo, fresh=redo),
        "dpo": lambda: run_dpo(run, preset.dpo, dpo, fresh=redo),
        "eval": lambda: run_eval_stage(run, evaluated),
    }
    results: dict = {}
    for i, name in enumerate(STAGES, 1):
        folder, tag = stage_dir(run, name), f"[{i}/{len(STAGES)}] {name}"
        if name == redo_from:
            redo = True  # the flywheel: this stage and the ones after it are retrained with the feedback
        recorded = read_stage_info(folder)
        skip = {"world": "not needed (--data given)",
                "sft": "skipped (--data given and no --sft-data: the world's demonstrations aren't built)",
                "rm": "skipped (--data given: the world's rankings aren't built)",
                "ppo": "skipped (--data given: the world's prompts and rankings aren't built)",
                "dpo": "skipped (--data given: the world's rankings aren't built)",
                "eval": "skipped (the suite scores the built-in world; --data given)"}
        if data and name in skip and not (name == "sft" and sft.data):
            print(f"{tag}: {skip[name]}", flush=True)
        elif name == "clean" and not clean:
            print(f"{tag}: skipped (--no-clean: the tokenizer and data stages read the raw text)", flush=True)
        elif recorded.get("complete") and not redo:
            wanted, old = settings[name](), recorded.get("settings")
            if old != wanted:
                diff = {k: (old.get(k) if isinstance(old, dict) else None, v) for k, v in wanted.items()
                        if not isinstance(old, dict) or old.get(k) != v}
                raise ChatforgeError(f"{folder} is complete but was made with other settings {diff} (then, now). "
                                     f"Add --force to redo it and the stages after it, or use another --run")
            print(f"{tag}: complete, skipping ({folder})", flush=True)
        else:
            print(f"{tag}: running -> {folder}", flush=True)
            t0 = time.perf_counter()
            results[name] = actions[name]()
            seconds = time.perf_counter() - t0
            record_wall_time(folder, seconds)  # the report card's cost table reads it
            print(f"{tag}: done in {seconds:.1f}s{_brief(name, results[name])}", flush=True)
            redo = True  # later stages were built from the old output
        if name == until:
            break
    return results
