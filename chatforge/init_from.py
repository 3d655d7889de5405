"""Start a run from a local Hugging Face checkpoint (`--init-from <hf-dir>`) instead of from scratch.

    chatforge pipeline --run runs/qwen --init-from /models/Qwen2-0.5B      # continued pre-training, then on
    chatforge pretrain --run runs/qwen --init-from /models/Qwen2-0.5B

What it does, once per run (`import_into_run`):
- the folder's tokenizer becomes the run's tokenizer (`<run>/tokenizer`): our special tokens (<|bos|>,
  <|user|>, <|end|>, ...) are added where it lacks them, so the chat template and label masks work the same
  as with a tokenizer we trained; token shards are then written with it;
- the weights are imported (`hf.import_hf`) into `<run>/init`, with the embedding (and an untied lm_head)
  grown to cover the added tokens: new rows start at the mean of the existing rows, the usual choice, so
  the new tokens begin as an "average" token rather than noise that would blow up the first steps.

A run's tokenizer is either trained by chatforge or imported, never both: importing into a run whose
tokenizer came from elsewhere is refused (use a new --run), so shards and models can't mix vocabularies.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from chatforge import ChatforgeError
from chatforge.model import GPT, load_config, save_model
from chatforge.run import mark_complete, read_stage_info, stage_dir
from chatforge.tokenizer import SPECIAL_TOKENS, Tokenizer

INIT_DIR = "init"


def hf_tokenizer_with_specials(folder: Path) -> Tokenizer:
    """The folder's tokenizer.json with our special tokens added where missing."""
    from tokenizers import AddedToken
    from tokenizers import Tokenizer as HFTokenizer

    f = folder / "tokenizer.json"
    if not f.is_file():
        raise ChatforgeError(f"{f}: missing; --init-from needs the model's fast tokenizer (tokenizer.json)")
    try:
        hf = HFTokenizer.from_file(str(f))
    except Exception as e:
        raise ChatforgeError(f"{f}: cannot read tokenizer ({e})") from None
    missing = [t for t in SPECIAL_TOKENS if hf.token_to_id(t) is None]
    if missing:
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    # the HF post-processor (e.g. Llama's "add <s>") would put tokens into plain text: we place specials
    # ourselves, through the chat template
    hf.post_processor = None
    return Tokenizer(hf)


def resize_vocab(model: GPT, vocab_size: int) -> GPT:
    """A copy of `model` whose embedding / lm_head have `vocab_size` rows; new rows = mean of old rows."""
    cfg = model.cfg
    if vocab_size <= cfg.vocab_size:
        return model
    from dataclasses import replace

    bigger = GPT(replace(cfg, vocab_size=vocab_size))
    sd = model.state_dict()
    for name in ("wte.weight", "lm_head.weight"):
        if name == "lm_head.weight" and cfg.tie_embeddings:
            continue
        old = sd[name]
        sd[name] = torch.cat([old, old.mean(0, keepdim=True).expand(vocab_size - old.shape[0], -1)])
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["wte.weight"]
    bigger.load_state_dict(sd)
    return bigger


def _folder_digest(folder: Path) -> str:
    """Cheap identity of a checkpoint folder: config + tokenizer contents and weight file sizes."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.name in ("config.json", "tokenizer.json"):
            h.update(f.name.encode() + f.read_bytes())
        elif f.suffix in (".safetensors", ".bin"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def init_settings(folder: str | Path) -> dict:
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise ChatforgeError(f"--init-from {folder}: not a folder (a local HF model folder is needed; "
                             f"nothing is downloaded)")
    return {"init_from": str(folder), "source_digest": _folder_digest(folder)}


def import_into_run(run: str | Path, folder: str | Path) -> dict:
    """Make `folder`'s tokenizer the run's and its weights `<run>/init` (skipped if already done)."""
    from chatforge.hf import import_hf

    run, folder = Path(run), Path(folder)
    settings = init_settings(folder)
    tok_dir, init_dir = stage_dir(run, "tokenizer"), run / INIT_DIR
    recorded = read_stage_info(tok_dir)
    if recorded.get("complete") and recorded.get("settings") == settings and \
            read_stage_info(init_dir).get("settings") == settings:
        return {"vocab_size": Tokenizer.load(tok_dir).vocab_size, "model_dir": str(init_dir), "skipped": True}
    if recorded.get("complete"):
        raise ChatforgeError(f"{tok_dir} already holds a tokenizer made otherwise ({recorded.get('settings')}); "
                             f"a run has one vocabulary: use a new --run for --init-from {folder}")
    tok = hf_tokenizer_with_specials(folder)
    model = import_hf(folder)
    need = -(-tok.vocab_size // 64) * 64 if tok.vocab_size > model.cfg.vocab_size else model.cfg.vocab_size
    model = resize_vocab(model, need)
    tok_dir.mkdir(parents=True, exist_ok=True)
    tok.save(tok_dir)
    mark_complete(tok_dir, settings=settings, stage="tokenizer", vocab_size=tok.vocab_size)
    save_model(model, init_dir)
    tok.save(init_dir)
    mark_complete(init_dir, settings=settings, stage="init", params=model.num_params())
    return {"vocab_size": tok.vocab_size, "model_dir": str(init_dir), "params": model.num_params()}


def ensure_imported(run: str | Path, folder: str | Path) -> None:
    """For a training command given --init-from: import now (one process), or check it was imported."""
    import os

    if read_stage_info(Path(run) / INIT_DIR).get("settings") == init_settings(folder):
        return
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ChatforgeError(f"{folder} is not imported into {run} yet: run `chatforge pipeline --run {run} "
                             f"--init-from {folder} --until data` once (one process) before torchrun")
    import_into_run(run, folder)


def init_settings_of_run(run: str | Path) -> dict:
    return read_stage_info(Path(run) / INIT_DIR).get("settings", {})


def load_init_weights(run: str | Path, model: GPT) -> None:
    """Copy <run>/init's weights into `model` (same shape; dropout and the like may differ)."""
    from chatforge.model import load_state

    sd = load_state(Path(run) / INIT_DIR, model.cfg)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise ChatforgeError(f"{Path(run) / INIT_DIR}: the imported weights don't fit the model to train "
                             f"(only non-shape --set model.* overrides work with --init-from): {e}") from None


def init_model_config(run: str | Path):
    """The imported model's config (the shape a run started with --init-from trains)."""
    init_dir = Path(run) / INIT_DIR
    if not read_stage_info(init_dir).get("complete"):
        raise ChatforgeError(f"{init_dir}: no imported model; pass --init-from <hf-dir>")
    return load_config(init_dir)
