"""The report card of a pipeline run: plots and tables of what the run measured, in one markdown page.

    chatforge report --run runs/demo      # -> runs/demo/eval/report.md + runs/demo/eval/plots/*.png

Everything in the report is read from the run's own files — `<stage>/metrics.jsonl`, `<stage>/stage.json`,
`<stage>/eval.json`, `eval/<stage>.json`, `clean/stats.json`, `data/meta.json`, `world/stats.json`,
`run.json` — and nothing is estimated beyond sums and ratios of those figures. A stage whose files are
missing is reported as "not run" instead of failing, so the report works on a half-finished run too.

Plots (matplotlib's object API on the Agg canvas: no display, no pyplot global state):
    plots/losses.png        train / val loss per optimizer step of pretrain, sft, rm, dpo
    plots/ppo.png           PPO reward (RM score, and score minus the KL penalty) and KL per iteration
    plots/capabilities.png  the capability suite per model stage (base, sft, ppo, dpo)
    plots/funnel.png        documents and tokens kept by each cleaning step
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path

from chatforge import ChatforgeError
from chatforge.eval import RATE_KEYS
from chatforge.run import MODEL_STAGES, STAGES, read_json, read_run_info, require_run, stage_dir

# the pipeline stages trained by the shared loop: they log "step", "train/loss", ...
LOOP_STAGES = ("pretrain", "sft", "rm", "dpo")
# the model stages the capability suite scores, in pipeline order (the table's columns)
EVAL_STAGES = tuple(MODEL_STAGES)
# one colour per model stage, the same in every plot
COLOURS = {"base": "#7f7f7f", "sft": "#1f77b4", "ppo": "#ff7f0e", "dpo": "#2ca02c", "rm": "#9467bd",
           "pretrain": "#7f7f7f"}
# what a task-name suffix means (eval writes "<task>@rag", "<task>@sc8", "<task>@calc", "refusal+moderation")
VARIANTS = (("@rag", "with retrieval"), ("@sc", "self-consistency, {} samples"),
            ("@calc", "with the calculator tool"), ("+moderation", "with the moderation filter"))
PLAIN_NOTES = {"arithmetic_direct": "no chain-of-thought", "arithmetic_cot": "with chain-of-thought",
               "retrieval_qa_seen": "asked in training wordings"}
PLOTS = ("losses.png", "ppo.png", "capabilities.png", "funnel.png")
LN2 = math.log(2)  # the pairwise loss of a model that cannot tell the answers apart


# ---------------------------------------------------------------- reading the run

def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl ([] when absent). A last line without its newline is a write in
    progress (a stage still training) and is left out; any other damaged line is an error naming it."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == len(lines):  # no "\n" after it: still being written
                break
            raise ChatforgeError(f"{path}:{i}: damaged metrics line ({e.msg})") from None
        if isinstance(rec, dict):
            out.append(rec)
    return out


def series(records: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float]]:
    """(x, y) of the records that carry `key`, sorted by x; a resumed stage logs some steps twice, and the
    later record (the one the finished model went through) wins."""
    by_x = {r[x]: r[key] for r in records if x in r and isinstance(r.get(key), (int, float))}
    xs = sorted(by_x)
    return xs, [by_x[v] for v in xs]


def _json(path: Path, what: str) -> dict | None:
    return read_json(path, what) if path.is_file() else None


def safetensors_params(path: Path) -> int | None:
    """Parameter count from the safetensors header alone (8-byte length + JSON), without loading weights."""
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        try:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        except (struct.error, json.JSONDecodeError, UnicodeDecodeError):
            return None
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def eval_results(run: Path) -> dict[str, dict]:
    """eval/<stage>.json of every scored stage: {stage: results}, pipeline order first."""
    folder = stage_dir(run, "eval")
    found = {}
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        obj = read_json(f, "eval result")
        if isinstance(obj.get("tasks"), dict):
            found[obj.get("stage", f.stem)] = obj
    order = [s for s in EVAL_STAGES if s in found] + sorted(s for s in found if s not in EVAL_STAGES)
    return {s: found[s] for s in order}


def load_run(run: str | Path) -> dict:
    """Everything the report shows, read once. Absent files are None / [] / {}."""
    run = require_run(run)
    d: dict = {"run": run, "info": read_run_info(run), "stage": {}, "metrics": {}, "eval_json": {}}
    for stage in STAGES:
        d["stage"][stage] = _json(stage_dir(run, stage) / "stage.json", "stage record")
    for stage in ("pretrain", "sft", "rm", "ppo", "dpo"):
        d["metrics"][stage] = read_metrics(stage_dir(run, stage) / "metrics.jsonl")
    for stage in ("rm", "ppo", "dpo"):
        d["eval_json"][stage] = _json(stage_dir(run, stage) / "eval.json", "evaluation summary")
    d["capabilities"] = eval_results(run)
    d["clean"] = _json(stage_dir(run, "clean") / "stats.json", "cleaning statistics")
    d["data"] = _json(stage_dir(run, "data") / "meta.json", "shard metadata")
    d["world"] = _json(stage_dir(run, "world") / "stats.json", "world statistics")
    d["params"] = safetensors_params(stage_dir(run, "pretrain") / "model.safetensors")
    found = (any(d["stage"].values()) or any(d["metrics"].values()) or d["capabilities"] or d["clean"]
             or d["data"] or d["world"])
    if not found:
        raise ChatforgeError(f"{run}: nothing to report yet — no stage has written its results (stage.json, "
                             f"metrics.jsonl, eval/<stage>.json); run `chatforge pipeline --run {run}` first")
    return d


# ---------------------------------------------------------------- measured figures

def training_time(records: list[dict]) -> float | None:
    """Seconds spent in optimizer steps: each logged perf/tokens_per_s is the tokens of its logging interval
    over that interval's time (eval and checkpoint saves excluded), so sum(Δtokens / tokens_per_s)."""
    steps, tokens = series(records, "train/tokens")
    _, tps = series([r for r in records if "train/tokens" in r], "perf/tokens_per_s")
    if not steps or len(tps) != len(steps):
        return None
    total, prev = 0.0, 0
    for t, rate in zip(tokens, tps):
        if rate > 0:
            total += (t - prev) / rate
        prev = t
    return total


def throughput(records: list[dict]) -> dict:
    """Last step, tokens processed, time in steps, tokens/s over that time, mean logged MFU."""
    steps, tokens = series(records, "train/tokens")
    _, mfu = series(records, "perf/mfu")
    seconds = training_time(records)
    last_step = max((r["step"] for r in records if "step" in r), default=None)
    return {"steps": last_step, "tokens": tokens[-1] if tokens else None, "seconds": seconds,
            "tokens_per_s": tokens[-1] / seconds if tokens and seconds else None,
            "mfu": sum(mfu) / len(mfu) if mfu else None}


def ppo_time(records: list[dict]) -> dict[str, float]:
    """Total seconds per PPO phase (time/generation_s, time/scoring_s, time/training_s) over all iterations."""
    out: dict[str, float] = {}
    for key in sorted({k for r in records for k in r if k.startswith("time/")}):
        _, ys = series(records, key, x="iteration")
        out[key.removeprefix("time/").removesuffix("_s")] = sum(ys)
    return out


def task_base(task: str) -> str:
    """The plain task a variant row belongs to: arithmetic_cot@sc8 -> arithmetic_cot, refusal+moderation -> refusal."""
    return re.split(r"[@+]", task, maxsplit=1)[0]


def task_order(tasks: set[str]) -> list[str]:
    """Plain tasks alphabetically, each followed by its variants; bpb (another unit) last. The no-CoT / CoT
    pair is put direct-first so the table reads "without -> with"."""
    def key(t: str) -> tuple:
        base = task_base(t)
        group = "arithmetic_" if base.startswith("arithmetic_") else base
        return (base == "bpb", group, base != "arithmetic_direct", base, t != base, t)
    return sorted(tasks, key=key)


def task_note(task: str) -> str:
    if task in PLAIN_NOTES:
        return PLAIN_NOTES[task]
    for suffix, note in VARIANTS:
        if suffix in task:
            k = task.split(suffix, 1)[1]
            return note.format(k) if "{}" in note else note
    return ""


def _score(task: str, score: float) -> str:
    # the same units as `chatforge eval`: bpb in bits/byte, the rest as a fraction shown in %
    return f"{score:.3f}" if task_base(task) == "bpb" else f"{100 * score:.1f}%"


# ---------------------------------------------------------------- formatting helpers

def _n(x) -> str:
    return "–" if x is None else f"{x:,}" if isinstance(x, int) else f"{x:,.0f}"


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _secs(s) -> str:
    if s is None:
        return "not recorded"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min ({s:.0f} s)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# ---------------------------------------------------------------- plots

def _figure(rows: int, cols: int, size: tuple[float, float], **kw):
    from matplotlib.figure import Figure  # imported here: only `chatforge report` needs matplotlib

    fig = Figure(figsize=size, dpi=110)
    return fig, fig.subplots(rows, cols, squeeze=False, **kw)


def _not_run(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="#888888", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_losses(d: dict, path: Path) -> None:
    """One panel per loop-trained stage: train loss (line) and val loss (dots); accuracy if logged."""
    fig, axes = _figure(2, 2, (11, 7.5))
    for ax, stage in zip(axes.flat, LOOP_STAGES):
        recs = d["metrics"][stage]
        pairwise = stage in ("rm", "dpo")
        ax.set_title(f"{stage}: " + ("preference loss" if pairwise else "next-token loss"))
        if not recs:
            _not_run(ax, f"{stage}: not run (no metrics.jsonl)")
            continue
        xs, ys = series(recs, "train/loss")
        ax.plot(xs, ys, color=COLOURS[stage], lw=1.4, label="train loss")
        xs, ys = series(recs, "val/loss")
        if xs:
            ax.plot(xs, ys, "o--", color="black", ms=4, lw=1, label="val loss")
        if pairwise:
            ax.axhline(LN2, color="#bbbbbb", ls=":", lw=1, label="chance (ln 2)")
        selected = (d["stage"].get(stage) or {}).get("selected_step")
        if selected is not None:
            ax.axvline(selected, color="#d62728", ls=":", lw=1.2, label=f"kept checkpoint (step {selected})")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss per pair (nats)" if pairwise else "cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        acc_keys = sorted({k for r in recs for k in r if "acc" in k.split("/")[-1]})
        if acc_keys:  # accuracy on a second axis, in %
            twin = ax.twinx()
            for k in acc_keys:
                xs, ys = series(recs, k)
                twin.plot(xs, [100 * y for y in ys], ls="-.", lw=1.2, label=k)
            twin.set_ylabel("accuracy (%)")
            h2, l2 = twin.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        ax.legend(handles, labels, fontsize=8, loc="upper right")
    fig.suptitle("Training loss per stage (metrics.jsonl)", fontsize=13)
    fig.tight_layout()
    fig.savefig(path)


def plot_ppo(recs: list[dict], path: Path) -> None:
    """Reward and KL to the SFT policy per PPO iteration."""
    fig, axes = _figure(1, 2, (11, 4.2))
    ax, kl = axes[0]
    for key, label, style in (("objective/scores", "RM score", "-"),
                              ("objective/rlhf_reward", "RLHF reward (score − KL penalty)", "--")):
        xs, ys = series(recs, key, x="iteration")
        if xs:
            ax.plot(xs, ys, style, color=COLOURS["ppo"] if style == "-" else "black", lw=1.4, label=label)
    ax.set_title("PPO reward on the rollouts")
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("mean reward per answer (normalised RM units)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    xs, ys = series(recs, "objective/kl", x="iteration")
    kl.plot(xs, ys, color="#d62728", lw=1.4, label="KL(policy ‖ SFT) per answer")
    kl.set_title("KL divergence from the SFT model")
    kl.set_xlabel("PPO iteration")
    kl.set_ylabel("KL per answer (nats)")
    kl.grid(alpha=0.3)
    kl.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_capabilities(caps: dict[str, dict], path: Path) -> None:
    """Grouped bars: every task (variants beside their plain task) per model stage; bpb in its own panel."""
    tasks = task_order({t for r in caps.values() for t in r["tasks"]})
    scored = [t for t in tasks if task_base(t) != "bpb"]
    bpb = [t for t in tasks if task_base(t) == "bpb"]
    fig, axes = _figure(1, 2, (13, 5), gridspec_kw={"width_ratios": [max(len(scored), 1), 1.6]})
    ax, bx = axes[0]
    width = 0.8 / max(len(caps), 1)
    for i, (stage, r) in enumerate(caps.items()):
        offs = [j + (i - (len(caps) - 1) / 2) * width for j in range(len(scored))]
        got = [(x, 100 * r["tasks"][t]["score"]) for x, t in zip(offs, scored) if t in r["tasks"]]
        bars = ax.bar([x for x, _ in got], [v for _, v in got], width, label=stage, color=COLOURS.get(stage))
        # the value on each bar: a score of 0 is otherwise indistinguishable from "not evaluated" (no bar)
        ax.bar_label(bars, fmt="%.0f", fontsize=6, padding=1)
        if bpb and bpb[0] in r["tasks"]:
            bars = bx.bar(i, r["tasks"][bpb[0]]["score"], 0.7, color=COLOURS.get(stage))
            bx.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(scored)), scored, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("score (%; F1 / chrF ×100; higher is better)")
    ax.set_ylim(0, 105)
    missing = [s for s in EVAL_STAGES if s not in caps]
    ax.set_title("Capability suite per stage (eval/<stage>.json)"
                 + (f" — not evaluated: {', '.join(missing)}" if missing else ""))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="stage", fontsize=8)
    bx.set_xticks(range(len(caps)), list(caps), fontsize=8)
    bx.set_title("held-out text")
    bx.set_ylabel("bits per byte (lower is better)")
    bx.grid(axis="y", alpha=0.3)
    if not bpb:
        _not_run(bx, "bpb: not scored")
    fig.tight_layout()
    fig.savefig(path)


def plot_funnel(clean: dict, path: Path) -> None:
    """Horizontal bars of documents (and tokens, when counted) left after each cleaning step."""
    measures = [m for m in ("documents", "tokens") if isinstance(clean.get(m), dict) and clean[m]]
    from matplotlib.ticker import FuncFormatter

    fig, axes = _figure(1, len(measures), (6.5 * len(measures), 4.5))
    for ax, m in zip(axes[0], measures):
        steps = list(clean[m])
        vals = [clean[m][s] for s in steps]
        ax.barh(range(len(steps)), vals, color="#1f77b4")
        ax.set_yticks(range(len(steps)), steps)
        ax.invert_yaxis()  # input at the top, the funnel narrows downwards
        top = vals[0] or 1
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:,} ({100 * v / top:.1f}%)", va="center", fontsize=8)
        ax.set_xlim(0, top * 1.4)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_xlabel(f"{m} kept (count)")
        ax.set_ylabel("cleaning step")
        ax.set_title(f"{m.capitalize()} after each cleaning step")
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


# ---------------------------------------------------------------- markdown sections

def _status(d: dict, stage: str) -> str:
    info = d["stage"].get(stage)
    if info is None:
        folder = stage_dir(d["run"], stage)
        # the report itself lives in eval/: its own files do not make the eval stage "started"
        mine = {"report.md", "plots"} if stage == "eval" else set()
        started = folder.is_dir() and any(p.name not in mine for p in folder.iterdir())
        return "started (no stage.json)" if started else "not run"
    return "complete" if info.get("complete") is True else "incomplete"


def section_header(d: dict) -> list[str]:
    run = d["run"]
    out = [f"# Report card: `{run.name}`", "",
           f"Generated by `chatforge report --run {run}` from the run's files; every number below is read "
           "from them (sums and ratios at most). Plots are in `plots/`.", "", "## What this run is", ""]
    out.append(f"- **preset**: {d['info'].get('preset', 'not recorded')} (run.json)")
    world = (d["stage"].get("world") or {}).get("settings")
    if world:
        desc = ", ".join(f"{k} {v}" for k, v in world.items())
        w = d["world"] or {}
        extra = []
        if isinstance(w.get("documents"), dict):
            extra.append(f"{sum(w['documents'].values()):,} raw documents")
        if isinstance(w.get("sft"), dict):
            extra.append(f"{sum(w['sft'].values()):,} demonstrations")
        if "rankings" in w:
            extra.append(f"{w['rankings']:,} rankings" + (f" (labeler agreement {_pct(w['labeler_agreement'])})"
                                                         if "labeler_agreement" in w else ""))
        if "prompts" in w:
            extra.append(f"{w['prompts']:,} RL prompts")
        if isinstance(w.get("eval"), dict):
            extra.append(f"{len(w['eval'])} eval tasks × {max(w['eval'].values(), default=0)} items")
        out.append(f"- **world**: {desc}" + (f" — {', '.join(extra)}" if extra else "") + " (world/)")
    else:
        out.append("- **world**: not run (or the user's own data)")
    model = ((d["stage"].get("pretrain") or {}).get("settings") or {}).get("model")
    if model:
        shape = (f"{model.get('architecture')}, {model.get('n_layer')} layers, d_model {model.get('d_model')}, "
                 f"{model.get('n_head')} heads ({model.get('n_kv_head')} KV), vocab {_n(model.get('vocab_size'))}, "
                 f"context {model.get('max_seq_len')}")
        params = f"; {d['params']:,} parameters (base/model.safetensors)" if d["params"] else ""
        out.append(f"- **model**: {shape}{params}")
    if d["data"] and isinstance(d["data"].get("tokens"), dict):
        t = d["data"]["tokens"]
        out.append(f"- **pre-training data**: {_n(t.get('train'))} train + {_n(t.get('val'))} val tokens "
                   f"from {_n(d['data'].get('documents'))} documents (data/meta.json)")
    out += ["", *_table(["stage", "folder", "status"],
                        [[s, f"{stage_dir(run, s).name}/", _status(d, s)] for s in STAGES]), ""]
    return out


def section_training(d: dict, plot: str | None) -> list[str]:
    out = ["## Training curves", ""]
    if plot is None:
        return out + ["No training stage has logged metrics yet (pretrain, sft, rm, dpo: not run).", ""]
    out += [f"![training loss per stage]({plot})", ""]
    rows = []
    for stage in LOOP_STAGES:
        recs = d["metrics"][stage]
        if not recs:
            rows.append([stage, "not run", "–", "–", "–"])
            continue
        _, tr = series(recs, "train/loss")
        vx, vl = series(recs, "val/loss")
        rows.append([stage, _n(max(r.get("step", 0) for r in recs)),
                     f"{tr[0]:.4f} → {tr[-1]:.4f}" if tr else "–",
                     f"{vl[0]:.4f} → {vl[-1]:.4f}" if vl else "not logged",
                     f"{min(vl):.4f} (step {vx[vl.index(min(vl))]})" if vl else "–"])
    out += _table(["stage", "steps", "train loss first → last", "val loss first → last", "best val loss"], rows)
    sel = (d["stage"].get("sft") or {}).get("selected_step")
    if sel is not None:
        out += ["", f"SFT kept the step-{sel} checkpoint (best instruction score on the suite; sft/stage.json)."]
    return out + ["", "Losses are cross-entropy in nats per token (pretrain, sft) and the preference loss per "
                      "answer pair in nats (rm, dpo; ln 2 = 0.693 is a coin flip).", ""]


def section_alignment(d: dict, plot: str | None) -> list[str]:
    out = ["## Preference learning and RLHF", ""]
    rm, dpo, ppo = (d["eval_json"][s] or d["stage"].get(s) for s in ("rm", "dpo", "ppo"))
    acc = (d["eval_json"]["rm"] or {}).get("pairwise_accuracy")
    if acc:
        per = ", ".join(f"{k} {_pct(v['accuracy'])}" for k, v in acc.get("per_labeler", {}).items())
        out.append(f"- **rm**: held-out pairwise accuracy {_pct(acc['overall']['accuracy'])} on "
                   f"{_n(acc['overall'].get('pairs'))} pairs" + (f" (per labeler: {per})" if per else ""))
    elif rm and "pairwise_accuracy" in rm:
        out.append(f"- **rm**: held-out pairwise accuracy {_pct(rm['pairwise_accuracy'])}")
    else:
        out.append("- **rm**: not run")
    h = (d["eval_json"]["dpo"] or {}).get("heldout_preference_accuracy")
    if h and h.get("accuracy") is not None:
        out.append(f"- **dpo**: held-out preference accuracy of the implicit reward {_pct(h['accuracy'])} on "
                   f"{_n(h.get('pairs'))} pairs")
    elif dpo and dpo.get("heldout_preference_accuracy") is not None:
        out.append(f"- **dpo**: held-out preference accuracy {_pct(dpo['heldout_preference_accuracy'])}")
    else:
        out.append("- **dpo**: not run")
    recs = d["metrics"]["ppo"]
    if ppo and "ppo_reward" in ppo:
        out.append(f"- **ppo**: held-out RM reward sft {ppo['sft_reward']:.3f} → ppo {ppo['ppo_reward']:.3f}; "
                   f"win rate of ppo over sft {_pct(ppo.get('ppo_win_rate_vs_sft'))} on {_n(ppo.get('prompts'))} "
                   f"prompts; answers that ended: sft {_n(ppo.get('sft_ended'))}, ppo {_n(ppo.get('ppo_ended'))}; "
                   f"verifiably correct: sft {_pct(ppo.get('sft_correct'))}, ppo {_pct(ppo.get('ppo_correct'))}")
    else:
        out.append("- **ppo**: " + ("no held-out summary (no ppo/eval.json)" if recs else "not run"))
    if not recs:
        return out + ["", "ppo: not run (no ppo/metrics.jsonl), so no reward / KL curves.", ""]
    out += ["", f"![PPO reward and KL per iteration]({plot})", ""]
    rows = []
    for key in ("objective/scores", "objective/rlhf_reward", "objective/kl", "objective/entropy",
                "loss/policy_avg", "loss/value_avg"):
        xs, ys = series(recs, key, x="iteration")
        if xs:
            rows.append([f"`{key}`", f"{ys[0]:.4f}", f"{ys[-1]:.4f}", f"{max(ys):.4f}"])
    its = series(recs, "objective/kl", x="iteration")[0] or [r.get("iteration") for r in recs]
    out += _table(["metric (ppo/metrics.jsonl)", f"iteration {its[0]}", f"iteration {its[-1]}", "max"], rows)
    return out + [""]


def section_capabilities(d: dict, plot: str | None) -> list[str]:
    caps = d["capabilities"]
    out = ["## Capabilities", ""]
    if not caps:
        return out + ["No capability results (eval/<stage>.json): eval not run.", ""]
    out += [f"![capability suite per stage]({plot})", ""]
    columns = list(EVAL_STAGES) + [s for s in caps if s not in EVAL_STAGES]
    tasks = task_order({t for r in caps.values() for t in r["tasks"]})
    rows = []
    for t in tasks:
        cells = [_score(t, caps[s]["tasks"][t]["score"]) if s in caps and t in caps[s]["tasks"] else "–"
                 for s in columns]
        metric = next(caps[s]["tasks"][t].get("metric", "") for s in caps if t in caps[s]["tasks"])
        n = next(caps[s]["tasks"][t].get("n") for s in caps if t in caps[s]["tasks"])
        label = f"`{t}`" if t == task_base(t) else f"↳ `{t}`"
        rows.append([label, *cells, task_note(t), metric, _n(n)])
    out += _table(["task", *columns, "variant", "metric", "n"], rows)
    missing = [s for s in columns if s not in caps]
    modes = ", ".join(f"{s}: {caps[s].get('mode', '?')}, {caps[s].get('seconds', '?')} s" for s in caps)
    out += ["", f"Scores in % (F1 and chrF ×100), higher is better; bpb in bits per byte, lower is better. "
                f"↳ rows are variants of the task above them. Prompting and eval time: {modes}."]
    if missing:
        out.append(" ".join(f"{s}: not evaluated (no eval/{s}.json)." for s in missing))
    rates = _decision_rates(caps)
    if rates:
        out += ["", *_table(["decision rate", *caps], rates)]
    return out + [""]


def _decision_rates(caps: dict[str, dict]) -> list[list[str]]:
    """Rates the suite logs beside a score (refusal_rate_harmful, retrieval_recall, ...), one row each."""
    keys = {(t, k) for r in caps.values() for t, v in r["tasks"].items() for k in v if k.endswith(RATE_KEYS)}
    order = {t: i for i, t in enumerate(task_order({t for t, _ in keys}))}
    return [[f"`{t}` {k}", *(_pct(r["tasks"].get(t, {}).get(k)) for r in caps.values())]
            for t, k in sorted(keys, key=lambda tk: (order[tk[0]], tk[1]))]


def section_funnel(d: dict, plot: str | None) -> list[str]:
    out = ["## Data funnel", ""]
    clean = d["clean"]
    if not clean or not isinstance(clean.get("documents"), dict):
        out.append("clean: not run (no clean/stats.json).")
    else:
        out += [f"![documents kept per cleaning step]({plot})", ""]
        removed = clean.get("removed") or {}
        rows = []
        top = next(iter(clean["documents"].values())) or 1
        for step, docs in clean["documents"].items():
            why = [f"{k} {_n(v)}" for k, v in (removed.get(step) or {}).items()]
            why += [f"{k} {_n(v)} ({name.split('(', 1)[1].rstrip(')')})"
                    for name, reasons in removed.items() if name.startswith(f"{step} (")
                    for k, v in reasons.items()]
            rows.append([step, _n(docs), f"{100 * docs / top:.1f}%", _n((clean.get("characters") or {}).get(step)),
                         _n((clean.get("tokens") or {}).get(step)), ", ".join(why)])
        out += _table(["step", "documents", "of input", "characters", "tokens", "removed (why)"], rows)
    meta = d["data"]
    if meta and isinstance(meta.get("splits"), dict):
        parts = [f"{name}: {_n(sum(s.get('tokens', 0) for s in shards))} tokens in "
                 f"{_n(sum(s.get('docs', 0) for s in shards))} documents, {len(shards)} shard(s)"
                 for name, shards in meta["splits"].items()]
        out += ["", f"Token shards (data/meta.json, {meta.get('dtype', '?')}): " + "; ".join(parts) + "."]
    elif not meta:
        out += ["", "data: not run (no data/meta.json)."]
    return out + [""]


def section_cost(d: dict) -> list[str]:
    out = ["## Throughput and cost", ""]
    rows = []
    train_tokens = ((d["data"] or {}).get("tokens") or {}).get("train")
    for stage in LOOP_STAGES:
        recs = d["metrics"][stage]
        if not recs:
            rows.append([stage, "not run", "–", "–", "–", "–"])
            continue
        t = throughput(recs)
        tokens = _n(t["tokens"])
        if stage == "pretrain" and t["tokens"] and train_tokens:
            tokens += f" ({t['tokens'] / train_tokens:.2f} epochs)"
        rows.append([stage, _n(t["steps"]), tokens, _n(t["tokens_per_s"]),
                     _pct(t["mfu"]), _secs(t["seconds"])])
    ppo = d["metrics"]["ppo"]
    if ppo:
        phases = ppo_time(ppo)
        its = len(series(ppo, "objective/kl", x="iteration")[0]) or len(ppo)
        split = ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
        rows.append(["ppo", f"{its} iterations", "–", "–", "–",
                     f"{_secs(sum(phases.values()) if phases else None)}" + (f" ({split})" if split else "")])
    else:
        rows.append(["ppo", "not run", "–", "–", "–", "–"])
    out += _table(["stage", "steps", "tokens processed", "tokens/s", "MFU (mean logged)", "time in training steps"],
                  rows)
    other = []
    for s, r in d["capabilities"].items():
        if isinstance(r.get("seconds"), (int, float)):
            other.append(f"eval {s} {_secs(r['seconds'])}")
    seconds = (d["clean"] or {}).get("seconds")
    if isinstance(seconds, dict):
        other.append("clean " + ", ".join(f"{k} {v} s" for k, v in seconds.items()))
    for stage in STAGES:  # a stage that records its own wall time in stage.json
        s = (d["stage"].get(stage) or {}).get("seconds")
        if isinstance(s, (int, float)):
            other.append(f"{stage} {_secs(s)} (stage.json)")
    out += ["", "Time in training steps is summed from `metrics.jsonl` (each logging interval's tokens over its "
                "tokens/s; evaluation and checkpoint saves excluded); PPO's is the sum of its per-iteration "
                "`time/*` phases. Tokens processed: `train/tokens` at the last step, the tokens of the "
                "training batches as each stage counts them."]
    out += ["", ("Other recorded times: " + "; ".join(other) + ".") if other else "No other times are recorded."]
    if not any(isinstance((d["stage"].get(s) or {}).get("seconds"), (int, float)) for s in STAGES):
        out += ["", "Wall-clock time per stage (including data loading, evaluation and saves): not recorded in "
                    "the run's files."]
    return out + [""]


# ---------------------------------------------------------------- entry point

def write_report(run: str | Path) -> Path:
    """Write <run>/eval/report.md and <run>/eval/plots/*.png; return the report's path."""
    d = load_run(run)
    out = stage_dir(d["run"], "eval")
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)

    for name in PLOTS:  # a plot whose data is gone (stage re-run from scratch) must not linger
        (plots / name).unlink(missing_ok=True)

    def draw(name: str, fn, *args) -> str:
        fn(*args, plots / name)
        return f"plots/{name}"

    loss = draw("losses.png", plot_losses, d) if any(d["metrics"][s] for s in LOOP_STAGES) else None
    ppo = draw("ppo.png", plot_ppo, d["metrics"]["ppo"]) if d["metrics"]["ppo"] else None
    caps = draw("capabilities.png", plot_capabilities, d["capabilities"]) if d["capabilities"] else None
    clean = d["clean"]
    funnel = (draw("funnel.png", plot_funnel, clean)
              if clean and isinstance(clean.get("documents"), dict) and clean["documents"] else None)
    lines = [*section_header(d), *section_capabilities(d, caps), *section_training(d, loss),
             *section_alignment(d, ppo), *section_funnel(d, funnel), *section_cost(d)]
    report = out / "report.md"
    report.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return report
