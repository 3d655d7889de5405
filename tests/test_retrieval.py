"""Retrieval index: passages, terms, add / update / delete, persistence, Chinese queries, the CLI."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

from chatforge import ChatforgeError
from chatforge.cli import main
from chatforge.retrieval.chunks import chunk_document, read_documents, terms
from chatforge.retrieval.index import RetrievalIndex

TOWNS = [("Rennu", "雷努", "Amber River", "琥珀河", "clocks", "钟表"), ("Hasu", "哈苏", "Jade River", "玉河", "bread", "面包"),
         ("Loan", "洛安", "Pine River", "松河", "cheese", "奶酪"), ("Mimi", "米米", "Crane River", "鹤河", "glass", "玻璃"),
         ("Briren", "布瑞仁", "Silver River", "银河", "silk", "丝绸"), ("Kalo", "卡洛", "Red River", "赤河", "tea", "茶叶")]


def world_docs() -> list[dict]:
    docs = []
    for en, zh, river, zriver, spec, zspec in TOWNS:
        docs.append({"doc_id": f"en-{en}", "title": en, "source": "t.jsonl",
                     "text": f"The town of {en} lies on the {river}. Most people in {en} make {spec}."})
        docs.append({"doc_id": f"zh-{en}", "title": zh, "source": "t.jsonl",
                     "text": f"{zh}镇位于{zriver}边。{zh}的居民大多以制作{zspec}为生。"})
    return docs


def test_terms_are_words_and_han_characters_with_bigrams():
    assert terms("Where is the Amber River?") == ["amber", "river"]  # stopwords out, lower-cased
    assert terms("雷努镇") == ["雷", "努", "镇", "雷努", "努镇"]
    assert terms("Rennu 雷努 1846") == ["rennu", "雷", "努", "雷努", "1846"]


def test_passages_follow_paragraphs_and_sentences_and_cover_the_text():
    para = "Sentence one is here. Sentence two follows! Is this three? " * 6
    text = f"Title line\n\n{para.strip()}\n\n第二段。很短。\n\n" + "没有句号的一段很长的中文" * 30
    chunks = chunk_document({"doc_id": "d", "title": "T", "text": text}, max_chars=120)
    assert all(len(c["text"]) <= 120 for c in chunks) and len(chunks) > 4
    assert [c["chunk_id"] for c in chunks] == [f"d#{i}" for i in range(len(chunks))]
    joined = "".join(c["text"] for c in chunks)
    assert "".join(text.split()) == "".join(joined.split())  # nothing lost or added but whitespace
    assert all(c["text"].endswith((".", "!", "?", "。")) for c in chunks[:3])  # cut at sentence ends


def test_add_search_update_delete_and_reload(tmp_path):
    idx = RetrievalIndex.load(tmp_path)
    assert idx.search("anything") == [] and not (tmp_path / "index").exists()
    assert idx.add(world_docs()) == {"added": 12, "updated": 0, "unchanged": 0}
    idx.save()
    hit = idx.search("Which river does Loan lie on?", k=2)[0]
    assert hit["doc_id"] == "en-Loan" and "Pine River" in hit["text"] and hit["score"] > 0
    again = RetrievalIndex.load(tmp_path)  # persisted: the same answers after a reload
    assert [h["chunk_id"] for h in again.search("Mimi glass", k=3)] == [h["chunk_id"] for h in idx.search("Mimi glass", k=3)]
    assert again.add(world_docs()) == {"added": 0, "updated": 0, "unchanged": 12}
    changed = [{**d, "text": d["text"].replace("Pine River", "Moon River")} if d["doc_id"] == "en-Loan" else d
               for d in world_docs()]
    assert again.add(changed) == {"added": 0, "updated": 1, "unchanged": 11}
    assert again.delete(["en-Mimi", "zh-Mimi"]) == ["en-Mimi", "zh-Mimi"]
    again.save()
    third = RetrievalIndex.load(tmp_path)
    assert "Moon River" in third.search("Loan river", k=1)[0]["text"]
    assert all(h["doc_id"] not in ("en-Mimi", "zh-Mimi") for h in third.search("Mimi glass 米米 玻璃", k=10))
    with pytest.raises(ChatforgeError, match="no document with this id"):
        third.delete(["en-Kalo", "no-such-doc"])
    assert "en-Kalo" in third.docs  # a bad key removes nothing
    assert third.delete(["t.jsonl"]) and not third.docs  # by source file: every document read from it


def test_text_with_unicode_line_separators_survives_a_reload(tmp_path):
    idx = RetrievalIndex.load(tmp_path)
    idx.add([{"doc_id": "pdf", "title": "Odd", "source": "x.pdf", "text": "Kalo tea\u2028grows\x85well."}])
    idx.save()
    assert RetrievalIndex.load(tmp_path).search("Kalo tea", k=1)[0]["text"] == "Kalo tea\u2028grows\x85well."


def test_chinese_questions_find_the_chinese_passage(tmp_path):
    idx = RetrievalIndex.load(tmp_path)
    idx.add(world_docs())
    for en, zh, *_ in TOWNS:
        assert idx.search(f"{zh}镇位于哪条河边？", k=1)[0]["doc_id"] == f"zh-{en}"
        assert idx.search(f"{zh}的居民以制作什么为生？", k=1)[0]["doc_id"] == f"zh-{en}"
        assert idx.search(f"What do people in {en} make?", k=1)[0]["doc_id"] == f"en-{en}"
    assert idx.search("完全无关 xyzzy") == []  # no shared term: nothing rather than noise


def test_min_ratio_leaves_out_passages_far_below_the_best(tmp_path):
    from chatforge.retrieval.grounding import PASSAGE_CUTOFF, retrieve

    idx = RetrievalIndex.load(tmp_path)
    idx.add(world_docs())
    question = "Which river does the town of Loan lie on?"  # "town", "river" match every English passage a little
    full = idx.search(question, k=6)
    kept = idx.search(question, k=6, min_ratio=0.75)
    assert kept == [h for h in full if h["score"] >= 0.75 * full[0]["score"]]
    assert kept[0]["doc_id"] == "en-Loan" and len(kept) < len(full) == 6
    assert idx.search(question, k=6, min_ratio=0.0) == full
    assert retrieve(idx, question, 6) == idx.search(question, k=6, min_ratio=PASSAGE_CUTOFF)
    for bad in (-0.1, 1.5):
        with pytest.raises(ChatforgeError, match="min_ratio"):
            idx.search(question, min_ratio=bad)


def _pdf(lines: list[str]) -> bytes:
    """A one-page PDF with a text layer, written by hand (no PDF writer needed)."""
    content = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(f"({line}) '" for line in lines) + " ET"
    objs = ["<< /Type /Catalog /Pages 2 0 R >>", "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
            "/Contents 5 0 R >>", "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
            f"<< /Length {len(content)} >>\nstream\n{content}\nendstream"]
    out, offsets = b"%PDF-1.4\n", []
    for i, obj in enumerate(objs, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{obj}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objs) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    return out + f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


def test_pdf_text_layer_is_indexed_and_a_damaged_pdf_is_an_error(tmp_path):
    (tmp_path / "kalo.pdf").write_bytes(_pdf(["Kalo Guide", "The town of Kalo lies on the Red River.", "Tea grows there."]))
    (tmp_path / "blank.pdf").write_bytes(_pdf([]))
    docs, skipped = read_documents([str(tmp_path)])
    assert [d["title"] for d in docs] == ["Kalo Guide"] and "Red River" in docs[0]["text"]
    assert skipped == {"pdf_without_text": 1}  # a scan without a text layer: counted, not indexed
    idx = RetrievalIndex.load(tmp_path)
    idx.add(docs)
    assert idx.search("Which river is Kalo on?", k=1)[0]["doc_id"] == str(tmp_path / "kalo.pdf")
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 truncated")
    with pytest.raises(ChatforgeError, match="not a readable PDF"):
        read_documents([str(tmp_path / "bad.pdf")])


def test_reading_files_and_the_cli(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rennu.md").write_text("# Rennu\n\nThe town of Rennu lies on the Amber River.\n")
    (docs / "faq.jsonl").write_text(json.dumps({"id": "q1", "title": "雷努", "text": "雷努镇位于琥珀河边。"},
                                               ensure_ascii=False) + "\n{broken\n")
    (docs / "page.html").write_text("<html><body><nav>Home | About</nav><article><p>Kalo lies on the Red River "
                                    "and is famous for its tea, which its farmers pick every spring.</p></article>"
                                    "</body></html>")
    read, skipped = read_documents([str(docs)])
    assert {d["doc_id"] for d in read} == {"q1", str(docs / "rennu.md"), f"{docs / 'page.html'}:page.html"}
    assert skipped == {"not_json": 1} and {d["title"] for d in read} >= {"Rennu", "雷努"}
    run = tmp_path / "run"
    run.mkdir()
    assert main(["index", "add", "--run", str(run), str(docs)]) == 0
    assert "3 added" in capsys.readouterr().out
    assert main(["index", "search", "--run", str(run), "Kalo", "tea", "-k", "1"]) == 0
    assert "Red River" in capsys.readouterr().out
    assert main(["index", "delete", "--run", str(run), "q1"]) == 0
    assert main(["index", "list", "--run", str(run)]) == 0
    assert "2 documents" in capsys.readouterr().out
    assert main(["index", "add", "--run", str(run), str(tmp_path / "missing.md")]) == 2
    assert "no such file" in capsys.readouterr().err
    (docs / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    assert main(["index", "add", "--run", str(run), str(docs / "latin1.txt")]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_grounded_prompt_and_citations():
    from chatforge.retrieval.grounding import citations, grounded_messages, source_list

    idx_hits = [{"chunk_id": f"d{i}#0", "doc_id": f"d{i}", "title": f"T{i}", "text": f"passage {i}", "score": 1.0 / i}
                for i in (1, 2, 3)]
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Rennu?"}]
    out = grounded_messages(msgs, idx_hits)
    assert out[0] == msgs[0] and out[2] == msgs[1] and out[1]["role"] == "system"
    assert "[1] T1: passage 1" in out[1]["content"] and "[3] T3: passage 3" in out[1]["content"]
    assert "cite" in out[1]["content"]
    zh = grounded_messages([{"role": "user", "content": "雷努镇在哪里？"}], idx_hits)
    assert "注明" in zh[0]["content"] and zh[1]["content"] == "雷努镇在哪里？"
    assert grounded_messages(msgs, []) == msgs  # nothing retrieved: the conversation as it was
    text = "It lies on the Amber River [2][2], see also 【1】 and [7] and [0]."
    assert [c["n"] for c in citations(text, idx_hits)] == [2, 1]  # first use first, once; 7 and 0 name nothing
    assert citations(text, idx_hits)[0]["doc_id"] == "d2"
    assert [s["n"] for s in source_list(idx_hits)] == [1, 2, 3]


def test_server_answers_from_the_index_and_lists_sources(base_run, tmp_path):
    import shutil

    import httpx

    from tests.serving import running_server

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    cfg_file = run / "base" / "config.json"  # room for the passages: the RoPE model's context widened
    cfg_file.write_text(json.dumps(dict(json.loads(cfg_file.read_text()), max_seq_len=1024)))
    body = {"model": "m", "messages": [{"role": "user", "content": "Which river does Loan lie on?"}], "max_tokens": 4,
            "temperature": 0}
    with running_server(run) as url:  # no index: asking for retrieval is a clear 400
        r = httpx.post(url + "/v1/chat/completions", json={**body, "retrieval": True}, timeout=60)
        assert r.status_code == 400 and "no retrieval index" in r.json()["error"]["message"]
    idx = RetrievalIndex.load(run)
    idx.add(world_docs())
    idx.save()
    with running_server(run, "--retrieval", "--retrieval-k", "2") as url:
        grounded = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        # the other towns' passages match only "river", far below Loan's: the cutoff leaves them out
        assert [s["doc_id"] for s in grounded["sources"]] == ["en-Loan"]
        two = {**body, "messages": [{"role": "user", "content": "Which river do Loan and Mimi lie on?"}]}
        sources = httpx.post(url + "/v1/chat/completions", json=two, timeout=60).json()["sources"]
        assert sorted(s["doc_id"] for s in sources) == ["en-Loan", "en-Mimi"]  # two strong passages: k of them
        assert isinstance(grounded["choices"][0]["citations"], list)
        plain = httpx.post(url + "/v1/chat/completions", json={**body, "retrieval": False}, timeout=60).json()
        assert "sources" not in plain and "citations" not in plain["choices"][0]
        # the passages were in the prompt: the grounded prompt is longer by at least their tokens
        assert grounded["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20
        with httpx.stream("POST", url + "/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
            chunks = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        assert chunks[0]["sources"][0]["doc_id"] == "en-Loan" and "citations" in chunks[-1]["choices"][0]


class _GroundedScript:
    """Stands in for the engine in the retrieval eval: a real tokenizer and context, scripted answers."""

    def __init__(self, tok, ctx, answer_for):
        self.tok, self.answer_for, self.prompts = tok, answer_for, []
        self.model = SimpleNamespace(cfg=SimpleNamespace(max_seq_len=ctx))

    def generate(self, prompts, params):
        self.prompts += prompts
        return [SimpleNamespace(text=self.answer_for(self.tok.decode(p))) for p in prompts]


def test_world_library_retrieval_and_the_eval_row_measure_answers_and_citations(prepared_run):
    """The world's retrieval questions find their withheld article; the @rag row's rates are what the answers
    and their citations say (a scripted reader that copies from the passage it cites, and a bad citer)."""
    from chatforge.eval.rag import index_world_library, rag_row
    from chatforge.retrieval.grounding import fit_grounded, retrieve
    from chatforge.textio import read_jsonl
    from chatforge.tokenizer import Tokenizer

    assert index_world_library(prepared_run) == {"added": 400, "updated": 0, "unchanged": 0}
    assert index_world_library(prepared_run)["unchanged"] == 400  # a second pipeline eval re-indexes nothing
    idx = RetrievalIndex.load(prepared_run)
    items = read_jsonl(prepared_run / "world" / "eval" / "retrieval_qa.jsonl")
    found = [any(h["doc_id"] in it["gold_docs"] for h in idx.search(it["messages"][0]["content"], 3)) for it in items]
    assert sum(found) / len(found) >= 0.95
    # what the row puts in the prompt: the top 3 without those under 3/4 of the best score
    hits_in_prompt = [retrieve(idx, it["messages"][0]["content"], 3) for it in items[:20]]
    found_in_prompt = [any(h["doc_id"] in it["gold_docs"] for h in hits)
                       for it, hits in zip(items, hits_in_prompt)]
    assert sum(found_in_prompt) / len(found_in_prompt) >= 0.9

    tok = Tokenizer.load(prepared_run / "tokenizer")
    # a short context keeps the best passages that fit, whole
    hits = idx.search(items[0]["messages"][0]["content"], 3)
    for budget in (60, 120, 400):
        ids, used = fit_grounded(tok, items[0]["messages"], hits, budget)
        assert len(ids) <= budget and used == hits[:len(used)]
    assert len(fit_grounded(tok, items[0]["messages"], hits, 400)[1]) == 3

    def reader(prompt: str) -> str:  # answers with the gold answer, citing the passage that holds it
        item = next(it for it in items[:20] if it["messages"][0]["content"] in prompt)
        passages = re.findall(r"^\[(\d)\] [^:]+: (.*)$", prompt, re.M)
        n = next((n for n, text in passages if item["answers"][0] in text), None)
        return f"{item['answers'][0]} [{n}]" if n else "I don't know [7]"  # [7] names no passage

    row = rag_row(_GroundedScript(tok, 512, reader), idx, items[:20], k=3, max_tokens=40)
    recall = sum(found_in_prompt) / 20
    assert row["n"] == 20 and row["retrieval_recall"] == recall
    assert row["score"] == row["answers_citing"] == row["cited_and_right"] == recall
    assert row["citation_precision"] == 1.0
    assert row["passages_in_prompt"] == sum(map(len, hits_in_prompt)) / 20 < 3  # the cutoff left some out

    def bad_citer(prompt: str) -> str:  # no answer, and cites only passages that don't hold it
        item = next(it for it in items[:20] if it["messages"][0]["content"] in prompt)
        passages = re.findall(r"^\[(\d)\] [^:]+: (.*)$", prompt, re.M)
        return "It is " + " ".join(f"[{n}]" for n, text in passages if item["answers"][0] not in text) + "."

    wrong = rag_row(_GroundedScript(tok, 512, bad_citer), idx, items[:20], 3, 40)
    with_other = sum(any(it["answers"][0] not in h["text"] for h in hits) for it, hits in zip(items, hits_in_prompt))
    assert wrong["score"] == 0.0 and wrong["citation_precision"] == 0.0
    assert wrong["answers_citing"] == with_other / 20 > 0
