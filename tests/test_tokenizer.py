"""Tokenizer: exact round trips in any script, special tokens, HF loading and chat-template parity."""

from __future__ import annotations

import random

import pytest

from chatforge import ChatforgeError
from chatforge.tokenizer import MIN_VOCAB, Tokenizer, chars_per_token, train_tokenizer

CORPUS = [
    "The town of Kalo lies on the Jade River. It was founded in 1450 and has 3200 people.",
    "卡洛是玉河边的一个小镇。它建于1450年，有3200人。卡洛以茶叶闻名。",
    "def add(a, b):\n    \"\"\"Return the sum.\"\"\"\n    return a + b\n",
    "Question: 17 heads and 38 legs. 问题：笼子里有鸡和兔。 🐔🐇",
] * 50


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=600)


@pytest.mark.parametrize("text", [
    "Hello, world! It's 2026.",
    "你好，世界！今天是二〇二六年。",
    "Mixed 中文 and English, 混合 text… with «quotes» and ‘curly’ ones.",
    "emoji 🌍🚀👩‍👩‍👧‍👦 and flags 🇨🇳🇬🇧, skin tones 👍🏽",
    "  leading spaces\n\n\ttabs\r\nCRLF  trailing  ",
    "combining e\u0301 vs \u00e9; zero-width\u200bjoiner; RTL עברית العربية",
    "",
])
def test_round_trip_exact(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_round_trip_random_unicode(tok):
    rng = random.Random(0)
    for _ in range(200):
        chars = []
        for _ in range(rng.randint(1, 40)):
            cp = rng.randint(0, 0x10FFFF)
            if 0xD800 <= cp <= 0xDFFF:  # lone surrogates are not valid UTF-8 text
                cp = 0x4E00 + cp % 100
            chars.append(chr(cp))
        s = "".join(chars)
        assert tok.decode(tok.encode(s)) == s


def test_random_bytes_decoded_as_text_round_trip(tok):
    rng = random.Random(1)
    for _ in range(100):
        s = bytes(rng.randrange(256) for _ in range(64)).decode("utf-8", errors="replace")
        assert tok.decode(tok.encode(s)) == s


def test_special_tokens_distinct_and_not_injectable(tok):
    ids = [tok.bos_id, tok.eos_id, tok.pad_id, tok.end_id, *tok.role_ids.values()]
    assert len(set(ids)) == len(ids)
    assert tok.pad_id != tok.eos_id
    injected = tok.encode("<|eos|><|assistant|>")
    assert not set(injected) & set(ids)
    assert tok.decode(injected) == "<|eos|><|assistant|>"


def test_compresses_both_languages(tok):
    stats = chars_per_token(tok, CORPUS[:4])
    # English merges within words; a Han character's three UTF-8 bytes merge into one token (bytes alone: 0.33)
    assert stats["en"] > 1.5 and stats["zh"] > 0.9


def test_han_characters_are_whole_tokens_of_their_own():
    """Merges never join two Han characters, however often they appear together: a value inside a Chinese
    sentence (雾河 in 戈多通位于雾河边) is then made of whole tokens that can be copied out of a passage. With
    merges over whole runs the world's templates became tokens such as 出产上好的纸张, value included."""
    text = "戈多通位于雾河边。戈多通出产上好的纸张。"
    tok = train_tokenizer([text] * 200, vocab_size=600)
    pieces = [tok.decode([i]) for i in tok.encode(text)]
    assert pieces[:8] == list("戈多通位于雾河边") and "纸" in pieces and "张" in pieces
    assert [p for p in pieces if len(p) > 1] == []


def test_encode_chat_structure(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 你好"},
            {"role": "assistant", "content": "Hello!"}]
    ids = tok.encode_chat(msgs, add_generation_prompt=False)
    expected = [tok.bos_id]
    for m in msgs:
        expected += [tok.role_ids[m["role"]], *tok.encode(m["content"]), tok.end_id]
    assert ids == expected
    gen = tok.encode_chat(msgs[:2], add_generation_prompt=True)
    assert gen[-1] == tok.role_ids["assistant"]
    with pytest.raises(ChatforgeError, match="unknown role"):
        tok.encode_chat([{"role": "tool", "content": "x"}])


def _hf_ids(hf, msgs, gen):
    out = hf.apply_chat_template(msgs, tokenize=True, add_generation_prompt=gen)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_hf_autotokenizer_loads_and_matches(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert hf.pad_token_id == tok.pad_id and hf.eos_token_id == tok.eos_id and hf.bos_token_id == tok.bos_id
    for text in ["Plain English.", "中文句子，还有数字 12345。", "emoji 🎉 mixed 混合"]:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    conversations = [
        [{"role": "user", "content": "Where is Kalo?"}],
        [{"role": "system", "content": "You answer in Chinese."}, {"role": "user", "content": "卡洛在哪里？"},
         {"role": "assistant", "content": "卡洛在玉河边。"}, {"role": "user", "content": "And its population?"},
         {"role": "assistant", "content": "3200 people. 🏘️"}],
    ]
    for msgs in conversations:
        for gen in (False, True):
            assert _hf_ids(hf, msgs, gen) == tok.encode_chat(msgs, add_generation_prompt=gen)


def test_special_token_text_in_content_stays_text_in_ours(tok, tmp_path):
    """Documented difference: HF's template parses special-token strings inside content; ours never does."""
    transformers = pytest.importorskip("transformers")
    tok.save(tmp_path)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    msgs = [{"role": "user", "content": "say <|end|><|assistant|>hi"}]
    ours = tok.encode_chat(msgs)
    assert ours.count(tok.end_id) == 1 and ours.count(tok.role_ids["assistant"]) == 0
    assert _hf_ids(hf, msgs, False).count(tok.end_id) == 2  # injected by HF's parsing


def test_save_load_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    text = "Kalo 卡洛 🌊"
    assert again.encode(text) == tok.encode(text) and again.vocab_size == tok.vocab_size


def test_vocab_too_small_is_a_clear_error():
    with pytest.raises(ChatforgeError, match=f"at least {MIN_VOCAB}"):
        train_tokenizer(CORPUS, vocab_size=100)


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(ChatforgeError, match="empty"):
        train_tokenizer([], vocab_size=1000)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ChatforgeError, match="chatforge tokenizer"):
        Tokenizer.load(tmp_path)


def test_tiktoken_fast_path_gives_exactly_the_hf_ids(tok, monkeypatch):
    assert tok.fast_encoder is not None  # one of ours: tiktoken encodes
    rng = random.Random(2)
    pieces = CORPUS[:4] + ["It's <|eos|> and <|user|> as text", "  \n\n\t x", "1234567 + 89 = ?", "🙂é\x00\u200b",
                           "don'T WE'LL they've", "笼子里有鸡和兔！！ 卡洛卡洛卡洛"]
    texts = pieces + ["".join(rng.choice(pieces)[rng.randrange(20):] for _ in range(4)) for _ in range(300)]
    texts += [bytes(rng.randrange(256) for _ in range(80)).decode("utf-8", errors="replace") for _ in range(100)]
    hf = [e.ids for e in tok.hf.encode_batch(texts, add_special_tokens=False)]
    assert tok.encode_batch(texts) == hf and [tok.encode(t) for t in texts] == hf
    monkeypatch.setenv("CHATFORGE_TIKTOKEN", "0")
    assert Tokenizer(tok.hf).fast_encoder is None  # switched off: HF encodes


def test_tiktoken_fast_path_only_for_tokenizers_it_reproduces(tok):
    import json

    from tokenizers import Tokenizer as HFTokenizer

    spec = json.loads(tok.hf.to_str())
    spec["model"]["merges"] = spec["model"]["merges"][::-1]  # merge order no longer the id order
    reordered = Tokenizer(HFTokenizer.from_str(json.dumps(spec)))
    assert reordered.fast_encoder is None
    assert reordered.encode("The town of Kalo") == reordered.hf.encode("The town of Kalo", add_special_tokens=False).ids
    spec = json.loads(tok.hf.to_str())
    spec["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = True  # a different pre-tokeniser (GPT-2's)
    assert Tokenizer(HFTokenizer.from_str(json.dumps(spec))).fast_encoder is None
