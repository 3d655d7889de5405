"""Dense retrieval: a local encoder's passage vectors, persisted and incremental, fused with BM25 by rank.

The encoder is a randomly initialised 2-layer BERT written by the test (nothing is downloaded): its vectors
mean nothing semantically, so the tests check what holds for any encoder — a passage is its own nearest
neighbour, vectors are unit length, unchanged passages are never re-embedded, and fusion follows its formula.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatforge import ChatforgeError
from chatforge.cli import main
from chatforge.retrieval import dense
from chatforge.retrieval.dense import EmbedderSpec, reciprocal_rank_fusion
from chatforge.retrieval.index import RetrievalIndex

DOCS = [
    {"doc_id": "rennu", "title": "Rennu", "text": "Rennu lies on the Red River. Rennu is famous for its tea.",
     "source": "t"},
    {"doc_id": "kalo", "title": "Kalo", "text": "Kalo has 4200 people. Bakers of Kalo sell bread at dawn.",
     "source": "t"},
    {"doc_id": "zh", "title": "雷努", "text": "雷努镇位于赤河边，以茶叶闻名。", "source": "t"},
    {"doc_id": "lamp", "title": "Ello lamp", "text": "Ello Works makes the lamp. It costs 151 coins.", "source": "t"},
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("encoder")
    words = sorted({w for d in DOCS for w in (d["title"] + " " + d["text"]).lower().replace(".", " ").replace(",", " ")
                    .split()} | {c for d in DOCS for c in d["text"] if "\u4e00" <= c <= "\u9fff"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", ":", "，", "。", *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=128)).save_pretrained(folder)
    return folder


def _index(tmp_path, encoder, pooling="mean") -> RetrievalIndex:
    idx = RetrievalIndex(tmp_path / "index")
    idx.set_embedder(EmbedderSpec(str(encoder), pooling))
    idx.add(DOCS)
    idx.save()
    return idx


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_vectors_are_unit_length_and_a_passage_is_its_own_nearest_neighbour(tmp_path, encoder, pooling):
    idx = _index(tmp_path, encoder, pooling)
    mat = np.load(tmp_path / "index" / "dense" / "vectors.npy")
    assert mat.shape == (len(idx._order), 32)
    np.testing.assert_allclose(np.linalg.norm(mat, axis=1), 1.0, rtol=1e-5)
    for pos, chunk in enumerate(idx._order):
        ranked = dict(idx._dense_ranking(dense.passage_text(chunk), len(idx._order)))
        # its own cosine is 1 and none is higher (a random encoder's [CLS] states can be near-ties)
        assert ranked[pos] == pytest.approx(1.0, abs=1e-5) and ranked[pos] >= max(ranked.values()) - 1e-6


def test_hybrid_search_fuses_the_rankings_and_finds_passages_bm25_cannot(tmp_path, encoder):
    idx = _index(tmp_path, encoder)
    # a query none of whose words the index has: BM25 returns nothing, the dense side still ranks passages
    assert idx._bm25_ranking("zzzz qqqq", 10) == []
    assert len(idx.search("zzzz qqqq", k=3)) == 3
    # the fused score is the sum of 1 / (60 + rank) over the two rankings, recomputed here
    query = "Where is Rennu and what is it famous for?"
    lexical = [i for i, _ in idx._bm25_ranking(query, 20)]
    semantic = [i for i, _ in idx._dense_ranking(query, 20)]
    hits = idx.search(query, k=2)
    for h in hits:
        pos = next(i for i, c in enumerate(idx._order) if c["chunk_id"] == h["chunk_id"])
        want = sum(1 / (60 + r.index(pos) + 1) for r in (lexical, semantic) if pos in r)
        assert h["score"] == pytest.approx(want)
    assert hits[0]["doc_id"] == "rennu"  # first in BM25 and (an exact-title match) high in the dense list


def test_vectors_persist_and_only_new_or_changed_passages_are_embedded(tmp_path, encoder, monkeypatch):
    idx = _index(tmp_path, encoder)
    before = idx.search("tea and the Red River", k=3)
    again = RetrievalIndex.load(tmp_path)
    assert again.dense is not None and again.dense.spec.path == str(encoder)
    calls = []
    real = dense.Embedder.embed

    def counting(self, texts, queries=False):
        calls.append((len(texts), queries))
        return real(self, texts, queries)

    monkeypatch.setattr(dense.Embedder, "embed", counting)
    assert [h["chunk_id"] for h in again.search("tea and the Red River", k=3)] == [h["chunk_id"] for h in before]
    assert calls == [(1, True)]  # only the query was embedded
    calls.clear()
    again.add(DOCS + [{"doc_id": "new", "title": "Misu", "text": "Misu is a quiet village.", "source": "u"}])
    again.save()
    assert calls == [(1, False)]  # the one new passage; the four unchanged ones kept their vectors
    changed = dict(DOCS[1], text="Kalo has 5000 people now.")
    again.add([changed])
    again.delete(["u"])
    again.save()
    keys = json.loads((tmp_path / "index" / "dense" / "keys.json").read_text())
    assert len(keys) == len(again._order) == 4  # the deleted and the replaced passages' vectors are gone
    again.set_embedder(None)
    again.save()
    assert not (tmp_path / "index" / "dense").exists() and RetrievalIndex.load(tmp_path).dense is None


def test_reciprocal_rank_fusion():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1]], k=60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62) and fused[2][1] == pytest.approx(1 / 62)
    assert reciprocal_rank_fusion([[], []]) == []


def test_bad_encoders_and_the_cli(tmp_path, encoder, capsys):
    with pytest.raises(ChatforgeError, match="no config.json"):
        EmbedderSpec(str(tmp_path)).validate()
    with pytest.raises(ChatforgeError, match="--pooling"):
        EmbedderSpec(str(encoder), "max").validate()
    run = tmp_path / "run"
    run.mkdir()
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": d["doc_id"], "title": d["title"], "text": d["text"]}) + "\n"
                            for d in DOCS), encoding="utf-8")
    assert main(["index", "add", "--run", str(run), str(docs), "--embedder", str(tmp_path / "nope")]) == 2
    assert "no config.json" in capsys.readouterr().err
    assert not (run / "index" / "meta.json").exists()  # a refused add leaves no index behind
    assert main(["index", "add", "--run", str(run), str(docs), "--embedder", str(encoder)]) == 0
    assert f"dense: {encoder}" in capsys.readouterr().out
    assert main(["index", "search", "--run", str(run), "Where is Rennu?", "-k", "2"]) == 0
    assert "Rennu" in capsys.readouterr().out
    assert main(["index", "add", "--run", str(run)]) == 2  # nothing to add, no encoder change
    capsys.readouterr()
    # damaged vectors are a cache: reported, then embedded again from the passages
    (run / "index" / "dense" / "vectors.npy").write_bytes(b"garbage")
    idx = RetrievalIndex.load(run)
    assert "dense vectors unreadable" in capsys.readouterr().err and idx.dense.vectors == {}
    assert idx.search("Where is Rennu?", k=1)[0]["doc_id"] == "rennu"
    assert len(idx.dense.vectors) == len(idx._order)
    assert main(["index", "add", "--run", str(run), "--embedder", "none"]) == 0
    assert not (run / "index" / "dense").exists()
