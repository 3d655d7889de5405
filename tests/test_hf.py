"""HF interop: import random HF GPT-2 / Llama / Qwen2 models and export ours; logits must agree."""

from __future__ import annotations

import pytest
import torch

from chatforge import ChatforgeError
from chatforge.hf import export_hf, import_hf
from chatforge.model import GPT, ModelConfig, load_model, save_model

transformers = pytest.importorskip("transformers")

SMALL = dict(vocab_size=320, n_layer=2, d_model=64, n_head=4, max_seq_len=64)


def _hf_models():
    tf = transformers
    return {
        "gpt2": tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=320, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                                 activation_function="gelu_new")),
        "llama": tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96,
                                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                    max_position_embeddings=64, rope_theta=5000.0)),
        "qwen2": tf.Qwen2ForCausalLM(tf.Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=96,
                                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                    max_position_embeddings=64, tie_word_embeddings=True)),
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_import_hf_logits_match(arch, tmp_path):
    torch.manual_seed(0)
    hf = _hf_models()[arch].eval()
    with torch.no_grad():  # non-trivial norms and biases, so a mapping mistake can't hide behind init values
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    hf.save_pretrained(tmp_path)
    ours = import_hf(tmp_path).eval()
    idx = torch.randint(0, 320, (2, 24))
    with torch.no_grad():
        want = hf(idx).logits
        got, _ = ours(idx)
    assert (got - want).abs().max().item() < 1e-4


@pytest.mark.parametrize("style,kw", [("gpt2", {}), ("llama", {"n_kv_head": 2, "tie_embeddings": False}),
                                      ("qwen2", {"n_kv_head": 2})])
def test_export_loads_in_transformers_and_generates_the_same(style, kw, tmp_path, prepared_run_template):
    import shutil

    torch.manual_seed(1)
    model = GPT(ModelConfig.preset_style(style, **{**SMALL, "vocab_size": 1024, **kw})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    src = tmp_path / "ours"
    save_model(model, src)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(prepared_run_template / "tokenizer" / name, src / name)
    out = export_hf(src, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM",
                                 "qwen2": "Qwen2ForCausalLM"}[style]
    idx = torch.randint(0, 1000, (2, 20))
    with torch.no_grad():
        assert (model(idx)[0] - hf(idx).logits).abs().max().item() < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    # greedy decoding: the engine (told not to stop at eos, like HF here) == HF generate on the exported weights
    from chatforge.engine import Engine, SamplingParams
    from chatforge.tokenizer import Tokenizer

    prompt = [0, 17, 300, 5, 99]
    tk = Tokenizer.load(src)
    engine = Engine(model, tk)
    engine.default_stop_ids = ()
    ours = engine.generate([prompt], SamplingParams(max_tokens=15, temperature=0.0))[0].token_ids
    ids = torch.tensor([prompt])
    theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=15, do_sample=False,
                         eos_token_id=None, pad_token_id=1023, min_new_tokens=15)[0, len(prompt):].tolist()
    assert ours == theirs and len(ours) == 15
    # with its default stops, the engine gives a prefix of that, ended by eos/<|end|>
    eng = Engine(model, tk).generate([prompt], SamplingParams(max_tokens=15, temperature=0.0))[0].token_ids
    assert eng == theirs[:len(eng)] and (len(eng) == 15 or theirs[len(eng)] in (tk.eos_id, tk.end_id))
    # and the round trip back
    again = import_hf(out).eval()
    with torch.no_grad():
        assert (again(idx)[0] - model(idx)[0]).abs().max().item() < 1e-5


def test_unsupported_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ChatforgeError, match="config.json"):
        import_hf(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(ChatforgeError, match="unsupported HF model_type"):
        import_hf(tmp_path)
    odd = GPT(ModelConfig.preset_style("gpt2", **SMALL, n_kv_head=2))
    save_model(odd, tmp_path / "odd")
    with pytest.raises(ChatforgeError, match="GPT2LMHeadModel"):
        export_hf(tmp_path / "odd", tmp_path / "x")


def test_export_command_on_a_trained_run(prepared_run, tmp_path, capsys):
    from chatforge.cli import main
    from tests.conftest import TINY_SETS, TINY_TRAIN

    assert main(["pretrain", "--run", str(prepared_run), *TINY_SETS, *TINY_TRAIN, "--max-steps", "2",
                 "--set", "model.copy_head=16"]) == 0
    # a copy head, which no HF architecture has: refused unless dropped, by name
    assert main(["export", "--run", str(prepared_run), "--stage", "base", "--out", str(tmp_path / "hf")]) == 2
    assert "--drop-copy-head" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    assert main(["export", "--run", str(prepared_run), "--stage", "base", "--out", str(tmp_path / "hf"),
                 "--drop-copy-head"]) == 0
    assert "exported base" in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"))
    assert type(hf).__name__ == "LlamaForCausalLM"  # the tiny preset is Llama-style (GQA, tied embeddings)
    ours = load_model(prepared_run / "base")
    assert ours.cfg.copy_head > 0
    ids = torch.randint(0, ours.cfg.vocab_size, (2, 12))
    with torch.no_grad():  # the export is our plain next-token head: lm_head on the final hidden states
        plain = ours.lm_head(ours(ids, return_hidden=True)[0])
        assert (hf(ids).logits - plain).abs().max() < 1e-4
    assert main(["export", "--run", str(prepared_run), "--stage", "sft", "--out", str(tmp_path / "x")]) == 2
