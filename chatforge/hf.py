"""Hugging Face interop: export our models as GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM folders,
and import such folders (local files only) into our GPT.

    chatforge export --run runs/demo --stage base --format hf --out exported/
    from chatforge.hf import import_hf; model = import_hf("path/to/hf-folder")

Exported folders hold config.json, model.safetensors and the tokenizer files, so
`transformers.AutoModelForCausalLM.from_pretrained(out)` and `AutoTokenizer.from_pretrained(out)` load them
(and vLLM / llama.cpp converters accept them). Which architecture: GPT-2 style -> gpt2; RoPE models with
q/k/v biases -> qwen2; other RoPE models -> llama. Tests round-trip random HF models of each kind and compare
logits. Needs `transformers` (installed with the test extras).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from chatforge import ChatforgeError
from chatforge.model import GPT, ModelConfig, load_model
from chatforge.tokenizer import copy_tokenizer_files


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ChatforgeError("HF export/import needs `transformers`: pip install transformers") from None
    return transformers


def hf_architecture(cfg: ModelConfig) -> str:
    if cfg.copy_head:
        raise ChatforgeError("a model with a copy head (copy_head > 0) has no HF architecture; export it without "
                             "(chatforge export --drop-copy-head: the plain next-token head alone, which copies "
                             "from its context worse) or train with --set model.copy_head=0")
    if cfg.pos == "learned":
        if not (cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.bias and cfg.tie_embeddings
                and cfg.n_kv_head == cfg.n_head):
            raise ChatforgeError("only the full GPT-2 style (learned positions, LayerNorm, GELU, biases, tied "
                                 "embeddings, no GQA) exports as GPT2LMHeadModel")
        return "gpt2"
    if cfg.norm != "rmsnorm" or cfg.mlp != "swiglu" or cfg.bias:
        raise ChatforgeError("RoPE models export as Llama/Qwen2 only with RMSNorm, SwiGLU and no linear biases")
    return "qwen2" if cfg.qkv_bias else "llama"


# -- our names <-> HF names ----------------------------------------------------------------------------------
# GPT-2 per-block names (HF -> ours); HF's Conv1D linears store (in, out), the transpose of nn.Linear
GPT2_NORMS = {"ln_1": "norm1", "ln_2": "norm2"}
GPT2_LINEARS = {"attn.c_attn": "attn.qkv", "attn.c_proj": "attn.proj", "mlp.c_fc": "mlp.up", "mlp.c_proj": "mlp.down"}

def _to_hf_gpt2(sd: dict, cfg: ModelConfig) -> dict:
    out = {"transformer.wte.weight": sd["wte.weight"], "transformer.wpe.weight": sd["wpe.weight"],
           "transformer.ln_f.weight": sd["norm_f.weight"], "transformer.ln_f.bias": sd["norm_f.bias"]}
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"transformer.h.{i}."
        for hn, on in GPT2_NORMS.items():
            out[h + hn + ".weight"], out[h + hn + ".bias"] = sd[o + on + ".weight"], sd[o + on + ".bias"]
        for hn, on in GPT2_LINEARS.items():
            out[h + hn + ".weight"] = sd[o + on + ".weight"].t().contiguous()
            out[h + hn + ".bias"] = sd[o + on + ".bias"]
    return out


def _to_hf_llama(sd: dict, cfg: ModelConfig) -> dict:
    hd, nq, nkv = cfg.head_dim, cfg.n_head, cfg.n_kv_head
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["norm_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = sd[o + "attn.qkv.weight"].split([nq * hd, nkv * hd, nkv * hd])
        out.update({h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k,
                    h + "self_attn.v_proj.weight": v, h + "self_attn.o_proj.weight": sd[o + "attn.proj.weight"]})
        if cfg.qkv_bias:
            qb, kb, vb = sd[o + "attn.qkv.bias"].split([nq * hd, nkv * hd, nkv * hd])
            out.update({h + "self_attn.q_proj.bias": qb, h + "self_attn.k_proj.bias": kb,
                        h + "self_attn.v_proj.bias": vb})
        gate, up = sd[o + "mlp.up.weight"].chunk(2)
        out.update({h + "mlp.gate_proj.weight": gate, h + "mlp.up_proj.weight": up,
                    h + "mlp.down_proj.weight": sd[o + "mlp.down.weight"],
                    h + "input_layernorm.weight": sd[o + "norm1.weight"],
                    h + "post_attention_layernorm.weight": sd[o + "norm2.weight"]})
    return {k: v.contiguous() for k, v in out.items()}


def _from_hf_gpt2(hf: dict, cfg: ModelConfig) -> dict:
    def g(name):
        for prefix in ("transformer.", ""):  # GPT2Model checkpoints lack the "transformer." prefix
            if prefix + name in hf:
                return hf[prefix + name]
        raise ChatforgeError(f"HF checkpoint lacks {name!r}")

    sd = {"wte.weight": g("wte.weight"), "wpe.weight": g("wpe.weight"), "norm_f.weight": g("ln_f.weight"),
          "norm_f.bias": g("ln_f.bias")}
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"h.{i}."
        for hn, on in GPT2_NORMS.items():
            sd[o + on + ".weight"], sd[o + on + ".bias"] = g(h + hn + ".weight"), g(h + hn + ".bias")
        for hn, on in GPT2_LINEARS.items():
            sd[o + on + ".weight"] = g(h + hn + ".weight").t().contiguous()
            sd[o + on + ".bias"] = g(h + hn + ".bias")
    return sd


def _from_hf_llama(hf: dict, cfg: ModelConfig) -> dict:
    def g(name):
        if name not in hf:
            raise ChatforgeError(f"HF checkpoint lacks {name!r}")
        return hf[name]

    sd = {"wte.weight": g("model.embed_tokens.weight"), "norm_f.weight": g("model.norm.weight")}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = g("lm_head.weight")
    for i in range(cfg.n_layer):
        o, h = f"blocks.{i}.", f"model.layers.{i}."
        sd[o + "attn.qkv.weight"] = torch.cat([g(h + f"self_attn.{p}_proj.weight") for p in "qkv"])
        if cfg.qkv_bias:
            sd[o + "attn.qkv.bias"] = torch.cat([g(h + f"self_attn.{p}_proj.bias") for p in "qkv"])
        sd[o + "attn.proj.weight"] = g(h + "self_attn.o_proj.weight")
        sd[o + "mlp.up.weight"] = torch.cat([g(h + "mlp.gate_proj.weight"), g(h + "mlp.up_proj.weight")])
        sd[o + "mlp.down.weight"] = g(h + "mlp.down_proj.weight")
        sd[o + "norm1.weight"] = g(h + "input_layernorm.weight")
        sd[o + "norm2.weight"] = g(h + "post_attention_layernorm.weight")
    return sd


# -- configs ------------------------------------------------------------------------------------------------

def _rope_theta(c: dict) -> float:
    params = c.get("rope_parameters") or {}
    return float(c.get("rope_theta") or params.get("rope_theta") or 10000.0)


def config_from_hf(c: dict) -> ModelConfig:
    kind = c.get("model_type")
    if kind == "gpt2":
        if c.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
            raise ChatforgeError(f"GPT-2 activation {c['activation_function']!r} is not supported (tanh GELU only)")
        return ModelConfig.preset_style(
            "gpt2", vocab_size=c["vocab_size"], n_layer=c["n_layer"], n_head=c["n_head"], d_model=c["n_embd"],
            d_ff=c.get("n_inner") or 4 * c["n_embd"], max_seq_len=c["n_positions"],
            norm_eps=c.get("layer_norm_epsilon", 1e-5))
    if kind in ("llama", "qwen2"):
        rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
        if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
            raise ChatforgeError(f"RoPE scaling {rope} is not supported yet; only plain RoPE")
        if kind == "llama" and (c.get("attention_bias") or c.get("mlp_bias")):
            raise ChatforgeError("Llama checkpoints with attention_bias/mlp_bias are not supported")
        if c.get("head_dim") and c["head_dim"] != c["hidden_size"] // c["num_attention_heads"]:
            raise ChatforgeError("checkpoints whose head_dim differs from hidden_size / heads are not supported")
        return ModelConfig.preset_style(
            kind, vocab_size=c["vocab_size"], n_layer=c["num_hidden_layers"], n_head=c["num_attention_heads"],
            n_kv_head=c.get("num_key_value_heads") or c["num_attention_heads"], d_model=c["hidden_size"],
            d_ff=c["intermediate_size"], max_seq_len=c.get("max_position_embeddings", 2048),
            rope_theta=_rope_theta(c), norm_eps=c.get("rms_norm_eps", 1e-6),
            tie_embeddings=bool(c.get("tie_word_embeddings", False)), qkv_bias=kind == "qwen2")
    raise ChatforgeError(f"unsupported HF model_type {kind!r}; expected gpt2, llama or qwen2")


def _hf_config(cfg: ModelConfig, arch: str, tok_ids: dict):
    tf = _transformers()
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                             n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.d_ff,
                             activation_function="gelu_pytorch_tanh", layer_norm_epsilon=cfg.norm_eps,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True, **tok_ids)
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
              num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.n_kv_head,
              max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
              tie_word_embeddings=cfg.tie_embeddings, rope_theta=cfg.rope_theta, **tok_ids)
    return tf.Qwen2Config(**kw) if arch == "qwen2" else tf.LlamaConfig(**kw, attention_bias=False, mlp_bias=False)


# -- public API ----------------------------------------------------------------------------------------------

def export_hf(model_dir: str | Path, out_dir: str | Path, drop_copy_head: bool = False) -> Path:
    """Write an HF folder for the model in `model_dir` (config.json, model.safetensors, tokenizer).
    `drop_copy_head`: export a copy-head model (model.py) as its plain next-token head alone."""
    tf = _transformers()
    model = load_model(model_dir)
    if drop_copy_head and model.cfg.copy_head:
        model.copy, model.cfg.copy_head = None, 0
    cfg = model.cfg
    arch = hf_architecture(cfg)
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    tok_ids = {}
    tok_config = Path(model_dir) / "tokenizer.json"
    if tok_config.is_file():
        from chatforge.tokenizer import Tokenizer

        tok = Tokenizer.load(model_dir)
        tok_ids = {"bos_token_id": tok.bos_id, "eos_token_id": [tok.eos_id, tok.end_id], "pad_token_id": tok.pad_id}
    hf_cfg = _hf_config(cfg, arch, tok_ids)
    mapped = _to_hf_gpt2(sd, cfg) if arch == "gpt2" else _to_hf_llama(sd, cfg)
    with torch.device("meta"):
        hf_model = tf.AutoModelForCausalLM.from_config(hf_cfg)
    missing, unexpected = hf_model.load_state_dict(mapped, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_embeddings)]
    if missing or unexpected:
        raise ChatforgeError(f"internal: HF mapping incomplete (missing {missing[:4]}, unexpected {unexpected[:4]})")
    if cfg.tie_embeddings:
        hf_model.tie_weights()
    out = Path(out_dir)
    hf_model.save_pretrained(out, safe_serialization=True)
    if arch != "gpt2":  # transformers 4.x reads rope_theta at the top level (5.x: rope_parameters)
        cj = json.loads((out / "config.json").read_text())
        cj.setdefault("rope_theta", cfg.rope_theta)
        (out / "config.json").write_text(json.dumps(cj, indent=2))
    copy_tokenizer_files(model_dir, out)
    return out


def _read_hf_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd = {}
        for f in files:
            sd.update(load_file(str(folder / f)))
        return sd
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise ChatforgeError(f"{folder}: no model.safetensors, safetensors index or pytorch_model.bin")


def import_hf(folder: str | Path) -> GPT:
    """Our GPT with the weights of a local HF GPT-2 / Llama / Qwen2 folder (no hub access)."""
    folder = Path(folder)
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise ChatforgeError(f"{cfg_file}: missing; --init-from needs a local HF model folder")
    cfg = config_from_hf(json.loads(cfg_file.read_text()))
    hf = {k: v.float() for k, v in _read_hf_weights(folder).items()}
    if cfg.tie_embeddings is False and "lm_head.weight" not in hf and cfg.pos == "rope":
        raise ChatforgeError(f"{folder}: untied model without lm_head.weight")
    sd = _from_hf_gpt2(hf, cfg) if cfg.pos == "learned" else _from_hf_llama(hf, cfg)
    model = GPT(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_embeddings)]
    if missing or unexpected:
        raise ChatforgeError(f"{folder}: weights don't match the config (missing {missing[:4]}, "
                             f"unexpected {unexpected[:4]})")
    return model
