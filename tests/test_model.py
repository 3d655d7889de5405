"""The Transformer: both styles, KV-cache decode == full forward, accounting, save/load, bad configs."""

from __future__ import annotations

import pytest
import torch

from chatforge import ChatforgeError
from chatforge.model import GPT, KVCache, ModelConfig, load_model, save_model

SMALL = dict(vocab_size=300, n_layer=2, d_model=64, n_head=4, max_seq_len=64)
STYLE_CASES = [("gpt2", {}), ("llama", {"n_kv_head": 2}), ("llama", {"n_kv_head": 1}), ("qwen2", {"n_kv_head": 2})]


def _model(style: str, **kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig.preset_style(style, **{**SMALL, **kw})).eval()


@pytest.mark.parametrize("style,kw", STYLE_CASES)
def test_kv_cache_decode_equals_full_forward(style, kw):
    model = _model(style, **kw)
    idx = torch.randint(0, 300, (3, 40))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.cfg, batch_size=3)
        pieces = [model(idx[:, :17], cache=cache)[0], model(idx[:, 17:21], cache=cache)[0]]  # prefill, chunk
        pieces += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(21, 40)]  # token by token
    assert cache.length == 40
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=1e-5, rtol=1e-5)


def test_styles_differ_structurally():
    gpt2, llama = _model("gpt2"), _model("llama", n_kv_head=2)
    assert gpt2.wpe is not None and llama.wpe is None
    assert gpt2.lm_head.weight is gpt2.wte.weight and llama.lm_head.weight is not llama.wte.weight
    assert isinstance(gpt2.blocks[0].norm1, torch.nn.LayerNorm)
    assert gpt2.blocks[0].attn.qkv.bias is not None and llama.blocks[0].attn.qkv.bias is None
    # GQA: k/v projections are n_kv_head wide
    assert llama.blocks[0].attn.qkv.out_features == (4 + 2 * 2) * 16


def test_causality():
    model = _model("llama", n_kv_head=2)
    a = torch.randint(0, 300, (1, 20))
    b = a.clone()
    b[0, 12:] = (b[0, 12:] + 1) % 300
    with torch.no_grad():
        la, lb = model(a)[0], model(b)[0]
    torch.testing.assert_close(la[:, :12], lb[:, :12])
    assert not torch.allclose(la[:, 12:], lb[:, 12:])


def test_loss_ignores_masked_targets_and_matches_uniform_at_init():
    model = _model("gpt2")
    idx = torch.randint(0, 300, (2, 16))
    targets = torch.randint(0, 300, (2, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - torch.log(torch.tensor(300.0)).item()) < 0.3  # near-uniform predictions at init
    masked = targets.clone()
    masked[:, 8:] = -100
    logits, lm = model(idx, masked)
    manual = torch.nn.functional.cross_entropy(logits[:, :8].reshape(-1, 300), targets[:, :8].reshape(-1))
    torch.testing.assert_close(lm, manual)


def test_param_count_matches_hf_models():
    transformers = pytest.importorskip("transformers")
    ours = GPT(ModelConfig.preset_style("gpt2", vocab_size=512, n_layer=3, n_head=4, d_model=64, max_seq_len=128))
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=512, n_positions=128, n_embd=64, n_layer=3, n_head=4))
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())
    ours = GPT(ModelConfig.preset_style("llama", vocab_size=512, n_layer=3, n_head=4, n_kv_head=2, d_model=64,
                                        d_ff=176, max_seq_len=128))
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False))
    assert ours.num_params() == sum(p.numel() for p in hf.parameters())


def test_flops_per_token_formula():
    cfg = ModelConfig.preset_style("gpt2", vocab_size=50304, n_layer=12, n_head=12, d_model=768, max_seq_len=1024)
    model = GPT(cfg)
    n_matmul = 12 * (768 * 3 * 768 + 768 * 768 + 2 * 768 * 3072) + 768 * 50304
    assert model.flops_per_token(1024) == 6 * n_matmul + 12 * 12 * 768 * 1024
    assert abs(model.num_params() - 124.5e6) < 0.5e6  # the GPT-2 small shape (with padded vocab)


def test_save_load_round_trip(tmp_path):
    for style in ("gpt2", "llama"):
        model = _model(style)
        save_model(model, tmp_path / style)
        again = load_model(tmp_path / style).eval()
        idx = torch.randint(0, 300, (2, 10))
        with torch.no_grad():
            torch.testing.assert_close(again(idx)[0], model(idx)[0], atol=0, rtol=0)
        assert again.cfg == model.cfg


def test_corrupt_weights_are_a_clear_error(tmp_path):
    save_model(_model("llama"), tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ChatforgeError, match="corrupt or truncated"):
        load_model(tmp_path)


@pytest.mark.parametrize("kw,msg", [
    ({"d_model": 65}, "not divisible by n_head"),
    ({"n_kv_head": 3}, "not divisible by n_kv_head"),
    ({"pos": "alibi"}, "pos="),
    ({"n_layer": 0}, "n_layer=0"),
])
def test_bad_config_is_a_clear_error(kw, msg):
    with pytest.raises(ChatforgeError, match=msg):
        ModelConfig(**{**SMALL, **kw})


def test_context_overflow_is_a_clear_error():
    model = _model("gpt2")
    with pytest.raises(ChatforgeError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))
