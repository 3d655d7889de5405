"""Token shards and the window sampler: round trips, split determinism, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatforge import ChatforgeError
from chatforge.data.shards import load_split, read_meta, token_dtype, write_shards
from chatforge.textio import iter_documents
from chatforge.tokenizer import train_tokenizer
from chatforge.train.sampler import WindowSampler

DOCS = [f"Document {i}: the town of Kalo has {i * 7} people. 卡洛有{i * 7}人。" for i in range(40)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(DOCS, vocab_size=400)


def test_shards_round_trip_documents(tok, tmp_path):
    meta = write_shards(DOCS, tok, tmp_path, val_every=10, shard_tokens=200, progress=False)
    assert meta["documents"] == 40 and meta["dtype"] == "uint16"
    assert len(meta["splits"]["train"]) > 1  # small shard size forces several files
    decoded = {"train": [], "val": []}
    for split in decoded:
        for sh, arr in zip(meta["splits"][split], load_split(tmp_path, split)):
            starts = np.load(tmp_path / sh["index"])
            assert len(starts) == sh["docs"]
            for a, b in zip(starts, [*starts[1:], len(arr)]):
                ids = arr[a:b].tolist()
                assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
                decoded[split].append(tok.decode(ids[1:-1]))
    assert decoded["val"] == DOCS[::10]
    assert decoded["train"] == [d for i, d in enumerate(DOCS) if i % 10]
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == sum(len(tok.encode(d)) + 2 for d in DOCS)


def test_dtype_follows_vocab():
    assert token_dtype(65536) == np.uint16 and token_dtype(65537) == np.uint32


def test_empty_corpus_is_a_clear_error(tok, tmp_path):
    with pytest.raises(ChatforgeError, match="0 non-empty document"):
        write_shards(["", "   "], tok, tmp_path, progress=False)
    assert not (tmp_path / "meta.json").exists()


def test_truncated_shard_is_a_clear_error(tok, tmp_path):
    write_shards(DOCS, tok, tmp_path, progress=False)
    f = tmp_path / "train_00000.bin"
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(ChatforgeError, match="truncated"):
        load_split(tmp_path, "train")


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(ChatforgeError, match="chatforge data"):
        read_meta(tmp_path)


def test_sampler_epoch_covers_every_window_once_and_is_deterministic():
    arrays = [np.arange(1000, dtype=np.uint16), np.arange(1000, 1700, dtype=np.uint16)]
    s = WindowSampler(arrays, seq_len=50, seed=3)
    assert s.n == 999 // 50 + 699 // 50
    firsts = sorted(int(s.sample(g)[0]) for g in range(s.n))
    expected = sorted([i * 50 for i in range(999 // 50)] + [1000 + i * 50 for i in range(699 // 50)])
    assert firsts == expected
    again = WindowSampler(arrays, seq_len=50, seed=3)
    assert all((again.sample(g) == s.sample(g)).all() for g in range(0, 3 * s.n, 7))
    x, y = s.batch(5, 4)
    assert x.shape == (4, 50) and (x[:, 1:] == y[:, :-1]).all()


def test_sampler_too_little_data_is_a_clear_error():
    with pytest.raises(ChatforgeError, match="fewer than one window"):
        WindowSampler([np.arange(10, dtype=np.uint16)], seq_len=64, seed=0)


def test_iter_documents_reports_bad_lines(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(ChatforgeError, match="c.jsonl:2"):
        list(iter_documents([f]))
    f.write_text(json.dumps({"content": "no text field"}) + "\n")
    with pytest.raises(ChatforgeError, match="'text'"):
        list(iter_documents([f]))
    with pytest.raises(ChatforgeError, match="no such file"):
        list(iter_documents([tmp_path / "missing.jsonl"]))
