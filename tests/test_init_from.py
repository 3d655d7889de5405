"""--init-from: a local HF checkpoint (with a tokenizer that lacks our special tokens) becomes a run's
tokenizer and starting weights; the pipeline continues pre-training from it."""

from __future__ import annotations

import json

import pytest
import torch

from chatforge import ChatforgeError
from chatforge.config import TrainConfig, get_preset
from chatforge.init_from import import_into_run
from chatforge.model import load_model
from chatforge.pipeline import run_pipeline
from chatforge.tokenizer import SPECIAL_TOKENS, Tokenizer

transformers = pytest.importorskip("transformers")


def _foreign_checkpoint(folder, run_template):
    """A random GPT-2 with its own byte-level BPE tokenizer, trained without any of our special tokens."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    texts = [json.loads(line)["text"] for line in
             (run_template / "world" / "raw" / "encyclopedia.jsonl").read_text().split("\n")[:300] if line]
    hf_tok = HFTokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf_tok.decoder = decoders.ByteLevel()
    hf_tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder.mkdir()
    hf_tok.save(str(folder / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=hf_tok.get_vocab_size(), n_positions=64, n_embd=64, n_layer=2,
                                  n_head=4, activation_function="gelu_pytorch_tanh")
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(folder)
    return hf_tok, model


def test_import_adds_specials_and_keeps_the_models_function(prepared_run_template, tmp_path):
    hf_tok, hf_model = _foreign_checkpoint(tmp_path / "hf", prepared_run_template)
    run = tmp_path / "run"
    run.mkdir()
    assert import_into_run(run, tmp_path / "hf")["vocab_size"] > 400
    tok = Tokenizer.load(run / "tokenizer")
    assert all(tok.special_ids[t] >= hf_tok.get_vocab_size() for t in SPECIAL_TOKENS)  # appended, not reused
    text = "Kalo is a town. 卡洛是一个小镇。"
    assert tok.encode(text) == hf_tok.encode(text).ids  # plain text tokenises exactly as before
    assert tok.decode(tok.encode(text)) == text
    ours = load_model(run / "init").eval()
    assert ours.cfg.vocab_size % 64 == 0 and ours.cfg.vocab_size >= tok.vocab_size
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        want = hf_model(ids).logits
        got = ours(ids)[0]
        n = hf_tok.get_vocab_size()
        assert (got[..., :n] - want).abs().max().item() < 1e-4
        # new rows start at the mean embedding
        assert torch.allclose(ours.wte.weight[tok.bos_id], hf_model.transformer.wte.weight.mean(0), atol=1e-6)
    # the chat template works with the imported vocabulary
    chat = tok.encode_chat([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert chat[0] == tok.bos_id and chat[-1] == tok.role_ids["assistant"]
    # importing again is a no-op; into a run with a trained tokenizer it is refused
    assert import_into_run(run, tmp_path / "hf")["skipped"]
    with pytest.raises(ChatforgeError, match="one vocabulary"):
        import_into_run(prepared_run_template, tmp_path / "hf")
    with pytest.raises(ChatforgeError, match="not a folder"):
        import_into_run(run, tmp_path / "nowhere")


def test_pipeline_continues_pretraining_from_the_checkpoint(prepared_run_template, tmp_path):
    _foreign_checkpoint(tmp_path / "hf", prepared_run_template)
    run = tmp_path / "run"
    preset = get_preset("tiny")
    preset.train = TrainConfig(max_steps=2, batch_size=2, seq_len=32, lr=1e-12, warmup_steps=0, eval_every=100, eval_batches=1,
                               save_every=100, log_every=1, weight_decay=0.0)
    run_pipeline(run, "tiny", preset, until="pretrain", init_from=str(tmp_path / "hf"))
    init, base = load_model(run / "init"), load_model(run / "base")
    assert base.cfg == init.cfg  # the imported shape, not the tiny preset's
    for (name, a), b in zip(init.state_dict().items(), base.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # lr ~ 0: training started from the imported weights
    shards = json.loads((run / "data" / "meta.json").read_text())
    assert shards["tokenizer_sha256"] == Tokenizer.load(run / "tokenizer").fingerprint()
    # a second pipeline call skips every stage; a different checkpoint is refused with the difference
    run_pipeline(run, "tiny", preset, until="pretrain", init_from=str(tmp_path / "hf"))
    other = tmp_path / "hf2"
    _foreign_checkpoint(other, prepared_run_template)
    with pytest.raises(ChatforgeError, match="other settings"):
        run_pipeline(run, "tiny", preset, until="pretrain", init_from=str(other))


def test_sft_starts_from_an_imported_checkpoint(prepared_run_template, tmp_path):
    from chatforge.train.sft import SFTOptions, run_sft

    _foreign_checkpoint(tmp_path / "hf", prepared_run_template)
    run = tmp_path / "run"
    run.mkdir()
    (run / "world").mkdir()
    demos = (prepared_run_template / "world" / "sft.jsonl").read_text().split("\n")[:40]
    (run / "world" / "sft.jsonl").write_text("\n".join(demos) + "\n")
    cfg = TrainConfig(max_steps=2, batch_size=2, seq_len=64, lr=1e-12, warmup_steps=0, eval_every=2,
                      eval_batches=1, save_every=2, log_every=1, weight_decay=0.0)
    run_sft(run, cfg, SFTOptions(init_from=str(tmp_path / "hf"), on_bad="skip", select=False))
    init, sft = load_model(run / "init"), load_model(run / "sft")
    assert sft.cfg == init.cfg
    for (name, a), b in zip(init.state_dict().items(), sft.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    report = json.loads((run / "sft" / "data_report.json").read_text())
    assert report["kept"] > 0 and report["kept"] + report["skipped_total"] == report["records"]
