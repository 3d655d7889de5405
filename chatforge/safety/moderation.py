"""Moderation: a small, fast text classifier (harmful vs benign) for a chat server's inputs and outputs.

    chatforge moderation train --run runs/demo [--data mine.jsonl ...]      # -> runs/demo/moderation/
    chatforge moderation check --run runs/demo "How do I poison the well?"  # score and verdict
    chatforge serve --run runs/demo --moderation both                       # default when a moderator exists

    meta = train_moderation("runs/demo", extra=["mine.jsonl"])
    mod = Moderator.load("runs/demo")              # threshold: the one chosen on validation, or threshold=...
    mod.score(["How do I kill a stuck process?"])  # -> [0.05]
    mod.flagged("给我一个伤害某人的计划。")           # -> True

Model: hashed sparse features -> logistic regression. Features of a text (NFKC, lower-cased): English words
(`[a-z0-9]+`, crudely stemmed: drowning -> drown) as unigrams (function words excepted) and bigrams; Han
characters as unigrams, bigrams and trigrams within runs of Han text. (Character n-grams of English words
were tried and dropped: on the world's data they learned fragments of entity names.) Each feature
string is hashed (crc32) into `dim` buckets; a text is the set of its buckets, each with value 1/sqrt(count)
(an L2-normalised binary vector), so the score is `sigmoid(b + sum(w[buckets]) / sqrt(count))`. A text with
no features (empty) scores 0. Output text is scored over windows of OUTPUT_WINDOW characters (the highest
window counts), so one harmful passage in a long answer is not diluted by the rest.

Training (torch, CPU, one thread, full batch, Adam on the class-balanced logistic loss + L2, only the buckets
the data uses; seconds for the tiny world's 8000 texts): the records of
`RUN/world/moderation.jsonl` (the world's data; regenerated from the world's seed and size when the file is
absent) and of the user's jsonl files ({"text", "label": "harmful"|"benign"|1|0}), each record of user data
counted `extra_weight` times (20: a handful of user examples must be able to move a verdict against the
world's thousands — at 5 ten of them barely did); a user record with the same text as a world record replaces
it (user labels win). A stratified validation split (`val_fraction` of each source with at least MIN_VAL_SOURCE records;
smaller sources train only) picks the decision threshold: the one with the best balanced accuracy
(1 - (miss rate + false-positive rate) / 2), at the middle of the best run of thresholds in logit space.

The feedback store has no "this message is harmful" signal (ratings are about answer quality), so user data
comes from jsonl files.

`RUN/moderation/` holds:
    weights.safetensors   "weight" float32 [dim], "bias" float32 [1]
    metrics.jsonl         {"step", "train/loss"} every 25 steps, then {"val/loss", ...}
    meta.json             written last (a folder without it is not a moderator):
        {"format": "chatforge-moderation/1", "features": {"dim", "hash": "crc32", "words": [1, 2],
         "stem": true, "han": [1, 2, 3]}, "threshold", "output_window",
         "validation": {"n", "harmful", "benign", "precision", "recall", "false_positive_rate", "accuracy",
                        "loss"} (null without a validation split),
         "train": {"n", "harmful", "benign", "sources": {name: records}, "steps", "lr", "l2", "extra_weight",
         "seed", "val_fraction"}}
"""

from __future__ import annotations

import json
import math
import random
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from chatforge import ChatforgeError
from chatforge.textio import nonblank_lines

FORMAT = "chatforge-moderation/1"
DIM = 1 << 18
OUTPUT_WINDOW = 1000  # characters of output scored together
MIN_VAL_SOURCE = 50  # a source smaller than this goes to training whole
LABELS = {"harmful": 1, "benign": 0, 1: 1, 0: 0}
_WORD = re.compile(r"[a-z0-9]+")
# function words carry no unigram feature (they still form bigrams): alone they only mark a template's style
STOPWORDS = frozenset("a an the is are am was be to of in on at for and or i me my you your it its this that with by "
                      "from".split())
_HAN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")


def folder(run: str | Path) -> Path:
    return Path(run) / "moderation"


def exists(run: str | Path) -> bool:
    """Whether the run has a trained moderator (meta.json is written last)."""
    return (folder(run) / "meta.json").is_file()


# -- features ---------------------------------------------------------------------------------------------------
def _stem(word: str) -> str:
    """A crude suffix stripper (drowning, drowned, drowns -> drown), so inflections share a weight."""
    for suf in ("ing", "ed", "es", "s"):
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            return word[:-len(suf)]
    return word


def feature_strings(text: str) -> set[str]:
    t = unicodedata.normalize("NFKC", text).lower()
    words = [_stem(x) for x in _WORD.findall(t)]
    feats = {"w:" + x for x in words if x not in STOPWORDS}
    feats.update(f"b:{a} {b}" for a, b in zip(words, words[1:]))
    for run in _HAN.findall(t):
        feats.update("h:" + ch for ch in run)
        feats.update("hb:" + run[i:i + 2] for i in range(len(run) - 1))
        feats.update("ht:" + run[i:i + 3] for i in range(len(run) - 2))
    return feats


def featurize(text: str, dim: int = DIM) -> np.ndarray:
    """The sorted distinct hash buckets of a text."""
    return np.unique(np.fromiter((zlib.crc32(f.encode("utf-8")) % dim for f in feature_strings(text)),
                                 dtype=np.int64))


def _windows(text: str, size: int) -> list[str]:
    if len(text) <= size:
        return [text]
    step = size // 4
    return [text[i:i + size] for i in range(0, len(text) - size + step, step)]


# -- the moderator ------------------------------------------------------------------------------------------------
class Moderator:
    def __init__(self, weight: np.ndarray, bias: float, threshold: float, meta: dict | None = None):
        if not 0.0 < threshold < 1.0:
            raise ChatforgeError(f"moderation threshold must be between 0 and 1 (exclusive), not {threshold}")
        self.weight, self.bias, self.threshold = weight.astype(np.float32), float(bias), float(threshold)
        self.meta = meta or {}
        self.dim = len(weight)
        self.window = int(self.meta.get("output_window", OUTPUT_WINDOW))

    @classmethod
    def load(cls, run: str | Path, threshold: float | None = None) -> Moderator:
        """The moderator trained into `RUN/moderation/`; `threshold` overrides the validated one."""
        from safetensors.numpy import load_file

        d = folder(run)
        if not exists(run):
            raise ChatforgeError(f"{d}: no trained moderator (no meta.json); train one with "
                                 f"`chatforge moderation train --run {run}`")
        try:
            meta = json.loads((d / "meta.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ChatforgeError(f"{d / 'meta.json'}: damaged ({e}); retrain the moderator") from None
        if meta.get("format") != FORMAT:
            raise ChatforgeError(f"{d / 'meta.json'}: format {meta.get('format')!r} is not {FORMAT!r}; retrain")
        try:
            tensors = load_file(str(d / "weights.safetensors"))
            weight, bias = tensors["weight"], tensors["bias"]
        except Exception as e:  # noqa: BLE001 (any damage: missing file, bad header, missing tensor)
            raise ChatforgeError(f"{d / 'weights.safetensors'}: unreadable ({e}); retrain the moderator") from None
        if weight.shape != (meta["features"]["dim"],):
            raise ChatforgeError(f"{d}: weights have shape {weight.shape}, meta.json says dim "
                                 f"{meta['features']['dim']}; retrain the moderator")
        return cls(weight, float(bias[0]), meta["threshold"] if threshold is None else threshold, meta)

    def _logit(self, text: str) -> float | None:
        ids = featurize(text, self.dim)
        if len(ids) == 0:
            return None
        return self.bias + float(self.weight[ids].sum()) / math.sqrt(len(ids))

    def score(self, texts: Iterable[str]) -> list[float]:
        """Probability that each text is harmful (0.0 for a text without features)."""
        out = []
        for t in texts:
            z = self._logit(t)
            out.append(0.0 if z is None else 1.0 / (1.0 + math.exp(-z)))
        return out

    def output_score(self, text: str) -> float:
        """An answer's score: the highest over windows of `window` characters (a quarter-window apart)."""
        return max(self.score(_windows(text, self.window)))

    def flagged(self, text: str) -> bool:
        return self.score([text])[0] >= self.threshold


def moderation_decisions(run: str | Path, texts: Sequence[str]) -> list[bool] | None:
    """Whether the run's moderator flags each text (at its validated threshold); None without a moderator."""
    if not exists(run):
        return None
    mod = Moderator.load(run)
    return [s >= mod.threshold for s in mod.score(texts)]


# -- data ---------------------------------------------------------------------------------------------------------
def read_labeled(path: str | Path) -> list[tuple[str, int]]:
    """(text, label 1 harmful / 0 benign) from a jsonl file of {"text", "label"}; bad records name file and line."""
    p = Path(path)
    if not p.is_file():
        raise ChatforgeError(f"{p}: no such file (moderation data: JSON lines of {{\"text\", \"label\"}})")
    out = []
    for i, line in nonblank_lines(p):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ChatforgeError(f"{p}: line {i} is not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise ChatforgeError(f"{p}: line {i}: expected a JSON object with \"text\" and \"label\"")
        text, label = rec.get("text"), rec.get("label")
        if not isinstance(text, str) or not text.strip():
            raise ChatforgeError(f"{p}: line {i}: \"text\" must be a non-empty string (got {text!r})")
        if isinstance(label, bool) or label not in LABELS:
            raise ChatforgeError(f"{p}: line {i}: \"label\" must be \"harmful\", \"benign\", 1 or 0 (got {label!r})")
        out.append((text, LABELS[label]))
    if not out:
        raise ChatforgeError(f"{p}: no records (expected JSON lines of {{\"text\", \"label\"}})")
    return out


def world_records(run: str | Path) -> tuple[list[tuple[str, int]], str | None]:
    """The world's moderation data: world/moderation.jsonl, else regenerated from world/facts.json's seed and
    size (the same records `chatforge world` writes); ([], None) for a run without a world."""
    w = Path(run) / "world"
    if (w / "moderation.jsonl").is_file():
        return read_labeled(w / "moderation.jsonl"), "world/moderation.jsonl"
    if not (w / "facts.json").is_file():
        return [], None
    from chatforge.world.entities import build_world
    from chatforge.world.generate import SIZES, world_moderation

    facts = json.loads((w / "facts.json").read_text(encoding="utf-8"))
    seed, size = facts["seed"], facts["size"]
    recs = world_moderation(build_world(seed, SIZES[size]), seed, size)
    return [(r["text"], LABELS[r["label"]]) for r in recs], "world (regenerated from facts.json)"


# -- training -----------------------------------------------------------------------------------------------------
def _threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability threshold with the best balanced accuracy on (scores, labels), at the middle (in logit
    space) of the best run of cut points."""
    pos, neg = max(1, int(labels.sum())), max(1, int((1 - labels).sum()))
    eps = 1e-6
    logits = np.log(np.clip(scores, eps, 1 - eps) / np.clip(1 - scores, eps, 1 - eps))
    cuts = np.unique(logits)
    # candidate cut points: below all, between neighbours, above all
    cands = np.concatenate([[cuts[0] - 1.0], (cuts[:-1] + cuts[1:]) / 2, [cuts[-1] + 1.0]])
    bal = np.array([0.5 * (float(((logits >= c) & (labels == 1)).sum()) / pos
                           + float(((logits < c) & (labels == 0)).sum()) / neg) for c in cands])
    top = np.flatnonzero(bal >= bal.max() - 1e-12)
    runs = np.split(top, np.flatnonzero(np.diff(top) > 1) + 1)  # contiguous runs of best cut points
    run = max(runs, key=len)
    mid = (cands[run[0]] + cands[run[-1]]) / 2
    return float(min(max(1 / (1 + math.exp(-mid)), 1e-4), 1 - 1e-4))


def _metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    pred = scores >= threshold
    tp = int((pred & (labels == 1)).sum())
    fp = int((pred & (labels == 0)).sum())
    fn = int((~pred & (labels == 1)).sum())
    tn = int((~pred & (labels == 0)).sum())
    return {"n": len(labels), "harmful": tp + fn, "benign": fp + tn,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None,
            "false_positive_rate": round(fp / (fp + tn), 4) if fp + tn else None,
            "accuracy": round((tp + tn) / len(labels), 4) if len(labels) else None}


def train_moderation(run: str | Path, extra: Sequence[str | Path] = (), *, steps: int = 300, lr: float = 0.2,
                     l2: float = 1e-5, extra_weight: float = 20.0, val_fraction: float = 0.2, seed: int = 0,
                     dim: int = DIM, progress: bool = True) -> dict:
    """Train the moderator into `RUN/moderation/` from the world's data and the user's `extra` jsonl files;
    returns meta.json's contents."""
    import torch
    from safetensors.numpy import save_file
    from tqdm import tqdm

    from chatforge.run import atomic_write_text, require_run

    run = require_run(run)
    if not 0.0 <= val_fraction < 1.0:
        raise ChatforgeError(f"val_fraction must be in [0, 1), not {val_fraction}")
    if extra_weight <= 0:
        raise ChatforgeError(f"extra_weight must be > 0, not {extra_weight}")
    sources: list[tuple[str, list[tuple[str, int]], float]] = []
    world, name = world_records(run)
    if world:
        sources.append((name, world, 1.0))
    for f in extra:
        sources.append((str(f), read_labeled(f), extra_weight))
    if not sources:
        raise ChatforgeError(f"{run}: no moderation data: the run has no world (world/moderation.jsonl or "
                             f"world/facts.json) and no --data files of {{\"text\", \"label\"}} were given")
    # one record per text; a later source (the user's data) relabels an earlier one
    by_text: dict[str, tuple[int, float, int]] = {}
    for si, (_, recs, wt) in enumerate(sources):
        for text, label in recs:
            by_text[text] = (label, wt, si)
    rng = random.Random(seed)
    train, val = [], []
    for si in range(len(sources)):
        for label in (0, 1):
            items = [(t, lab, wt) for t, (lab, wt, s) in by_text.items() if s == si and lab == label]
            rng.shuffle(items)
            n_src = sum(1 for v in by_text.values() if v[2] == si)
            k = round(len(items) * val_fraction) if n_src >= MIN_VAL_SOURCE else 0
            val += items[:k]
            train += items[k:]
    labels = np.array([lab for _, lab, _ in train])
    if labels.min() == labels.max():
        raise ChatforgeError(f"moderation data has only {'harmful' if labels[0] else 'benign'} examples; "
                             "both labels are needed")

    ids = [featurize(t, dim) for t, _, _ in train]
    used, cols = np.unique(np.concatenate(ids), return_inverse=True)  # train only the buckets the data uses
    rows = torch.from_numpy(np.repeat(np.arange(len(ids)), [len(x) for x in ids]))
    cols = torch.from_numpy(cols.astype(np.int64))
    vals = torch.from_numpy(np.concatenate([np.full(len(x), 1 / math.sqrt(max(1, len(x))), np.float32)
                                            for x in ids]))
    y = torch.tensor(labels, dtype=torch.float32)
    wts = torch.tensor([wt for _, _, wt in train], dtype=torch.float32)
    n_pos, n_neg = float((wts * y).sum()), float((wts * (1 - y)).sum())
    wts = wts * torch.where(y == 1, 0.5 / n_pos, 0.5 / n_neg)  # class-balanced, sums to 1
    w = torch.zeros(len(used), requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, bias], lr=lr)
    out_dir = folder(run)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # the old moderator is gone until the new one is complete
    log = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny gathers and scatters: threads only add contention
    try:
        for step in tqdm(range(1, steps + 1), desc="moderation", disable=not progress):
            opt.zero_grad()
            z = torch.zeros(len(ids)).index_add(0, rows, w[cols] * vals) + bias
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="none") * wts).sum()
            (loss + l2 * w.pow(2).sum()).backward()
            opt.step()
            if step % 25 == 0 or step == steps:
                log.append({"step": step, "train/loss": round(loss.item(), 6)})
    finally:
        torch.set_num_threads(threads)
    weight = np.zeros(dim, np.float32)
    weight[used] = w.detach().numpy()
    b = float(bias.detach()[0])
    mod = Moderator(weight, b, 0.5)
    if val:
        vy = np.array([lab for _, lab, _ in val])
        vs = np.array(mod.score(t for t, _, _ in val))
        threshold = _threshold(vs, vy) if vy.min() != vy.max() else 0.5
        eps = 1e-7
        vloss = float(-np.mean(vy * np.log(vs + eps) + (1 - vy) * np.log(1 - vs + eps)))
        validation = {**_metrics(vs, vy, threshold), "loss": round(vloss, 6)}
        log.append({"step": steps, "val/loss": round(vloss, 6), **{f"val/{k}": v for k, v in validation.items()
                                                                    if k in ("precision", "recall",
                                                                             "false_positive_rate")}})
    else:
        threshold, validation = 0.5, None
    save_file({"weight": weight, "bias": np.array([b], np.float32)}, str(out_dir / "weights.safetensors"))
    (out_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    meta = {
        "format": FORMAT,
        "features": {"dim": dim, "hash": "crc32", "words": [1, 2], "stem": True, "han": [1, 2, 3]},
        "threshold": round(threshold, 6), "output_window": OUTPUT_WINDOW, "validation": validation,
        "train": {"n": len(train), "harmful": int(labels.sum()), "benign": int(len(labels) - labels.sum()),
                  "sources": {n: len(r) for n, r, _ in sources}, "steps": steps, "lr": lr, "l2": l2,
                  "extra_weight": extra_weight, "seed": seed, "val_fraction": val_fraction},
    }
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2, ensure_ascii=False))
    return meta
