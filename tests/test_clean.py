"""Cleaning raw text: each filter on hand-made English and Chinese examples, PII scrubbing, MinHash
deduplication (estimates against exact Jaccard), decontamination, bad input, and the whole run scored
against the world's noise labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from chatforge import ChatforgeError
from chatforge.data.clean.decontam import build_eval_index, contaminated
from chatforge.data.clean.dedup import Deduplicator, MinHasher, exact_jaccard, shingle_hashes
from chatforge.data.clean.docfilter import document_reason
from chatforge.data.clean.lines import clean_lines, line_reason
from chatforge.data.clean.pii import scrub_pii, valid_cn_id
from chatforge.data.clean.run import read_documents, run_clean
from chatforge.data.clean.text import han_ratio, normalise

EN_PROSE = ("The town of Rennu lies on the Red River. It was founded in 1233 and is known for its cheese, "
            "which the farmers sell at the market every week. Visitors often walk along the river to see the old mill.")
ZH_PROSE = "雷努镇位于赤河边，建于一二三三年，以奶酪闻名。农民每周在集市上出售奶酪，游客常沿河散步，去看那座古老的磨坊。"


def test_normalise_nfkc_whitespace_and_controls():
    assert normalise("Ｈｅｌｌｏ\u3000 world\r\n\r\n\r\nsecond\u200b line\t\t end ") == "Hello world\n\nsecond line end"
    assert normalise("ﬁne ①") == "fine 1"
    assert normalise("繁體", t2s=lambda s: s.replace("體", "体")) == "繁体"
    assert normalise("你好，世界！（Ｈｉ）") == "你好,世界!(Hi)"  # NFKC makes full-width punctuation ASCII ...
    assert normalise("你好，世界！（Ｈｉ）", keep_fullwidth_punct=True) == "你好，世界！（Hi）"  # ... unless kept
    assert han_ratio(ZH_PROSE) > 0.8 and han_ratio(EN_PROSE) == 0


@pytest.mark.parametrize("line,reason", [
    ("BUY NOW!!! Cheap teapots — 90% OFF at best-dealz.example", "ad"),
    ("Click here to win a free radio!!!", "ad"),
    ("Sponsored: the backpack everyone is talking about. Order today!", "ad"),
    ("【广告】特价茶壶，一折抢购，点击进入！", "ad"),
    ("恭喜您中奖！免费领取收音机，立即点击！", "ad"),
    ("© 2024 All rights reserved. Privacy | Terms | Cookies", "boilerplate"),
    ("Share on: Twitter | Facebook | WeChat | Email", "boilerplate"),
    ("首页 | 新闻 | 关于我们 | 联系 | 登录", "boilerplate"),
    ("Products > Kitchen > Teapots", "navigation"),
    ("Please enable JavaScript to view this page.", "c4"),
])
def test_ad_boilerplate_and_navigation_lines_go(line, reason):
    assert line_reason(line) == reason


@pytest.mark.parametrize("line", [
    EN_PROSE, ZH_PROSE, "x = a | b  # bitwise or", "Answer: 28 chickens, 11 rabbits.",
    "She said the offer was free, but nobody believed her.", "中文：通马戈用4条腿走路。", "The ratio is 3/4 of the total.",
    "for i in range(10): print(i)",
])
def test_ordinary_lines_stay(line):
    assert line_reason(line) is None


def test_clean_lines_keeps_the_article_around_a_spliced_ad():
    text = "Home | News | About | Contact | Login\n" + EN_PROSE + "\nClick here to win a free radio!!!\n" + ZH_PROSE
    kept, removed = clean_lines(text)
    assert kept == EN_PROSE + "\n" + ZH_PROSE
    assert [r for _, r in removed] == ["navigation", "ad"]


@pytest.mark.parametrize("text,reason", [
    ("Too short here.", "too_short"),
    ("太短了。", "too_short"),
    (" ".join(["cheap casino pills free win best deal"] * 10), "no_stopwords"),
    ("免费 中奖 优惠 pills casino " * 20, "low_diversity"),
    ("It\u00e2\u20ac\u2122s a fine day in the town of Rennu, and the river is calm today.", "mojibake"),
    ("\n".join(["The same line repeats here again and again."] * 6), "duplicate_lines"),
    ("\n".join(f"- item number {i} is here" for i in range(12)), "bullets"),
    (" ".join(["### a heading of words"] * 5), "symbols"),
    (ZH_PROSE * 3, "repetition"),
])
def test_document_rules(text, reason):
    assert document_reason(text) == reason


@pytest.mark.parametrize("text", [
    EN_PROSE, ZH_PROSE, "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\nx = [i * i for i in range(5)]",
    "Question: How many coins do 3 Mika teapots cost? Solution: One Mika costs 150 coins, so 3 cost 450 coins.",
    "塔安卡\n\n塔安卡22岁了。塔安卡是一位诗人。你可以在芬哈找到塔安卡。",
])
def test_good_documents_pass(text):
    assert document_reason(text) is None


def test_pii_scrubbing():
    text = ("Write to li.wei@example.com or call +86 138 1234 5678, 13812345678, (555) 123-4567 or 010-12345678. "
            "身份证 11010519491231002X. Founded in 1233; 3.14; order 20240101.")
    out, counts = scrub_pii(text)
    assert counts == {"email": 1, "phone": 4, "id_card": 1}
    assert "example.com" not in out and "1381234" not in out and "11010519491231002X" not in out
    assert "1233" in out and "3.14" in out and "20240101" in out  # numbers that aren't PII stay
    assert valid_cn_id("11010519491231002X") and not valid_cn_id("110105194912310021")
    assert scrub_pii("身份证 110105194912310021")[1]["id_card"] == 0  # wrong check digit: not an ID


def test_minhash_estimates_jaccard_and_lsh_finds_near_duplicates():
    rng = np.random.default_rng(0)
    m = MinHasher(256)
    errors = []
    for _ in range(100):
        a = rng.integers(0, 2**63, 200, dtype=np.uint64)
        b = np.concatenate([a[:150], rng.integers(0, 2**63, 40, dtype=np.uint64)])
        true = 150 / (200 + 40)
        errors.append(np.mean(m.signature(np.unique(a)) == m.signature(np.unique(b))) - true)
    assert abs(np.mean(errors)) < 0.01 and np.std(errors) < 0.05  # unbiased, ~sqrt(J(1-J)/256)
    doc = EN_PROSE + " " + EN_PROSE.replace("Rennu", "Elqui").replace("1233", "1402")
    repost = doc.replace(".", "!", 1) + " (reposted)"
    other = "A completely different story about a baker who lives in Hasu and bakes bread every morning for the town."
    assert exact_jaccard(doc, repost) > 0.9 and exact_jaccard(doc, other) < 0.1
    d = Deduplicator(threshold=0.8)
    assert d.check("a", doc) is None
    assert d.check("b", doc.upper()) == ("exact", "a")  # case and whitespace don't make a new document
    kind, first, j = d.check("c", repost)
    assert (kind, first) == ("near", "a") and j == pytest.approx(exact_jaccard(doc, repost))
    assert d.check("d", other) is None
    zh = ZH_PROSE * 2
    assert d.check("e", zh) is None and d.check("f", zh[:-1] + "！")[0] == "near"
    p = d.params
    assert p["bands"] * p["rows"] <= 128 and p["p_candidate_at"]["0.95"] > 0.99 and p["p_candidate_at"]["0.5"] < 0.01
    assert len(shingle_hashes("one two three")) == 1  # shorter than a shingle: one padded shingle


def test_world_copy_groups_are_exactly_the_pairs_above_the_jaccard_threshold():
    from itertools import combinations

    from chatforge.world.duplicates import duplicate_groups

    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(40)]
    base = [" ".join(rng.choice(words, 30)) for _ in range(12)]
    # dropping k of 26 shingles' words puts pairs on both sides of 0.8: k = 5 -> 0.81, k = 6 -> 0.77
    texts = base + [" ".join(b.split()[k:]) for b in base[:6] for k in (2, 5, 6)] + [b + " tail" for b in base[6:]]
    texts += [base[0].upper()] + [" ".join(rng.choice(words, 30)) for _ in range(3)]  # a copy, 3 unrelated
    groups = duplicate_groups(texts, threshold=0.8)
    js = {(i, j): exact_jaccard(texts[i], texts[j]) for i, j in combinations(range(len(texts)), 2)}
    assert any(0.8 <= j < 0.82 for j in js.values()) and any(0.75 < j < 0.8 for j in js.values())
    for (i, j), jac in js.items():  # brute force: every pair at >= 0.8 is in one group
        if jac >= 0.8:
            assert groups[i] == groups[j]
    for i, g in groups.items():  # and every member is linked to another member above the threshold
        assert any(exact_jaccard(texts[i], texts[k]) >= 0.8 for k, h in groups.items() if h == g and k != i)
        assert g == min(k for k, h in groups.items() if h == g)
    assert groups[len(texts) - 4] == groups[0]  # an exact copy (case only) joins its original's group
    assert len(set(groups.values())) < len(groups) < len(texts)  # there are copies, and unrelated texts left out


def test_decontamination_drops_documents_sharing_a_13gram_with_eval():
    index = build_eval_index([{"messages": [{"role": "user", "content": "Where is the Marmidor common? It is seen "
                                                                         "near Rennu on the banks of the Red River."}]}])
    assert contaminated("Old notes: the Marmidor common, it is seen near Rennu on the banks of the Red River!", index)
    assert not contaminated("Old notes: it is seen near Rennu on the banks of the Red River, says the guide.", index)
    assert not contaminated("The Marmidor is common. It lives near Rennu.", index)


def test_bad_input_is_a_clear_error_and_bad_records_are_counted_skips(tmp_path):
    from chatforge.data.clean.ingest import read_sources

    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ChatforgeError, match="not UTF-8"):
        read_documents([str(tmp_path / "bin.jsonl")])
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ChatforgeError, match="no documents"):
        read_documents([str(tmp_path / "empty.jsonl")])
    (tmp_path / "col.jsonl").write_text(json.dumps({"content": "wrong column"}) + "\n")
    with pytest.raises(ChatforgeError, match="no_text_field"):  # nothing usable: an error that says why
        read_documents([str(tmp_path / "col.jsonl")])
    assert read_documents([str(tmp_path / "col.jsonl")], text_column="content")[0]["text"] == "wrong column"
    with pytest.raises(ChatforgeError, match="no such file"):
        read_documents([str(tmp_path / "missing.jsonl")])
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ChatforgeError, match="unsupported file type"):
        read_documents([str(tmp_path / "x.csv")])
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("\n".join([json.dumps({"text": "a good document"}), "{not json", json.dumps({"txt": "x"}),
                                json.dumps({"text": "  "}), json.dumps({"text": "another one"})]))
    docs, skipped = read_sources({"": [str(mixed)]})
    assert [d["text"] for d in docs] == ["a good document", "another one"]
    assert skipped == {"not_json": 1, "no_text_field": 1, "empty_text": 1}
    (tmp_path / "a.txt").write_text("first doc\n\nsecond doc\n")
    assert [d["text"] for d in read_documents([str(tmp_path / "a.txt")])] == ["first doc", "second doc\n"]
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ChatforgeError, match="not a readable parquet file"):
        read_documents([str(tmp_path / "bad.parquet")])


def test_parquet_and_html_ingest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": [EN_PROSE, None, ZH_PROSE], "url": ["a", "b", "c"]}), tmp_path / "w.parquet")
    with pytest.raises(ChatforgeError, match=r"no column 'text'; columns: \['body', 'url'\]"):
        read_documents([str(tmp_path / "w.parquet")])
    docs = read_documents([str(tmp_path / "w.parquet")], text_column="body")
    assert [d["text"] for d in docs] == [EN_PROSE, ZH_PROSE] and docs[1]["url"] == "c"
    page = ("<html><body><nav><a href='/'>Home</a> | <a href='/n'>News</a></nav><article><h1>Rennu</h1>"
            f"<p>{EN_PROSE}</p><p>{ZH_PROSE}</p></article><footer>© 2024 All rights reserved</footer></body></html>")
    (tmp_path / "p.html").write_text(page)
    text = read_documents([str(tmp_path / "p.html")])[0]["text"]
    assert EN_PROSE in text and ZH_PROSE in text and "All rights reserved" not in text and "News" not in text


def test_sources_are_mixed_by_weight(prepared_run, tmp_path):
    from chatforge.data.clean.ingest import parse_source

    assert parse_source("web=crawl/:0.6") == ("web", "crawl/", 0.6)
    assert parse_source("books=/data/b.parquet") == ("books", "/data/b.parquet", None)
    assert parse_source("C:/x.jsonl") == ("", "C:/x.jsonl", None)
    with pytest.raises(ChatforgeError, match="must be > 0"):
        parse_source("web=x:0")
    raw = prepared_run / "world" / "raw"
    stats = run_clean(prepared_run, workers=1, sources=[f"wiki={raw / 'encyclopedia.jsonl'}:3",
                                                       f"stories={raw / 'story.jsonl'}:1"])
    m = stats["mixture"]
    assert m["wiki"]["share"] == 0.75 and m["stories"]["share"] == 0.25
    docs = [json.loads(x) for x in (prepared_run / "clean" / "docs.jsonl").read_text().split("\n") if x]
    chars = {s: sum(len(d["text"]) for d in docs if d["source"] == s) for s in ("wiki", "stories")}
    assert chars["wiki"] / (chars["wiki"] + chars["stories"]) == pytest.approx(0.75, abs=0.02)
    for s in ("wiki", "stories"):  # epochs = output characters / cleaned characters of the source
        assert chars[s] / m[s]["chars"] == pytest.approx(m[s]["epochs"], rel=0.03)


def test_t2s_turns_a_traditional_repost_into_an_exact_duplicate(prepared_run, tmp_path):
    opencc = pytest.importorskip("opencc")  # a test extra; the converter is optional for users

    traditional = opencc.OpenCC("s2t").convert(ZH_PROSE)
    assert traditional != ZH_PROSE  # 镇 -> 鎮, 闻 -> 聞, ...
    f = tmp_path / "zh.jsonl"
    f.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in (ZH_PROSE, traditional, EN_PROSE)))
    plain = run_clean(prepared_run, data=[str(f)], workers=1)
    assert plain["documents"]["dedup"] == 3  # the two scripts share no Han 5-gram: both stay
    converted = run_clean(prepared_run, data=[str(f)], workers=1, t2s=True)
    assert converted["documents"]["dedup"] == 2 and converted["removed"]["dedup"] == {"exact": 1}
    kept = [json.loads(x)["text"] for x in (prepared_run / "clean" / "docs.jsonl").read_text().splitlines()]
    assert kept == [normalise(ZH_PROSE), normalise(EN_PROSE)]  # the first (simplified) copy is the one kept


def test_data_command_cleans_mixes_and_shards_named_sources_into_a_new_run(prepared_run, tmp_path, capsys):
    from chatforge.cli import main

    raw, run = prepared_run / "world" / "raw", tmp_path / "mine"
    args = ["data", "--run", str(run), "--source", f"wiki={raw / 'encyclopedia.jsonl'}:3",
            "--source", f"stories={raw / 'story.jsonl'}:1", "--workers", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "training one" in out and "wiki" in out and "epochs" in out
    docs = (run / "clean" / "docs.jsonl").read_text().splitlines()
    tok = json.loads((run / "tokenizer" / "stats.json").read_text())
    meta = json.loads((run / "data" / "meta.json").read_text())
    funnel = json.loads((run / "clean" / "stats.json").read_text())
    assert tok["sources"] == [str(run / "clean" / "docs.jsonl")] and meta["documents"] == len(docs)
    assert funnel["tokens"]["mix"] == meta["tokens"]["train"] + meta["tokens"]["val"] - 2 * len(docs)
    assert funnel["documents"]["mix"] == len(docs) != funnel["documents"]["decontam"]  # repeated / sampled
    assert funnel["mixture"]["wiki"]["share"] == 0.75
    assert main([*args, "--raw"]) == 2 and "--raw" in capsys.readouterr().err


def test_cleaning_the_world_against_its_noise_labels(prepared_run):
    stats = run_clean(prepared_run, workers=2)
    lab = stats["labels"]
    assert lab["line_removal"]["precision"] >= 0.9 and lab["line_removal"]["recall"] >= 0.9
    assert lab["reposts"]["recall"] >= 0.95
    near = lab["near_duplicates"]  # against every copy the world made, by exact Jaccard (world/duplicates.py)
    assert near["precision"] >= 0.95 and near["recall"] >= 0.95 and near["verdicts"] > 100
    assert stats["dedup"]["exact_jaccard_precision"] == 1.0
    assert 0 < stats["dedup"]["lsh_candidates_below_threshold"] < stats["dedup"]["lsh_candidates"]
    removed = stats["removed"]
    assert removed["quality"]["no_stopwords"] > 0 and removed["quality"]["mojibake"] > 0  # spam, mojibake
    docs = [json.loads(x) for x in (prepared_run / "clean" / "docs.jsonl").read_text().split("\n") if x]
    assert len(docs) == stats["documents"]["decontam"] < stats["documents"]["input"]
    assert not any("best-dealz" in d["text"] or "Privacy | Terms" in d["text"] for d in docs)
    # a repost stays only where its original was dropped by an earlier stage (then it is the first copy)
    reposts = lab["reposts"]
    assert sum("(reposted)" in d["text"] for d in docs) <= reposts["labelled"] - reposts["found"]
    funnel = [stats["documents"][s] for s in ("input", "normalise", "lines", "quality", "pii", "dedup", "decontam")]
    assert funnel == sorted(funnel, reverse=True)
    from chatforge.tokenizer import Tokenizer

    tok = Tokenizer.load(prepared_run / "tokenizer")  # token counts: with the run's tokenizer
    assert stats["tokens"]["decontam"] == sum(len(tok.encode(d["text"])) for d in docs)
    assert stats["tokens"]["input"] > stats["tokens"]["lines"] > stats["tokens"]["dedup"]
    assert (prepared_run / "clean" / "removed" / "dedup.jsonl").is_file()
    from chatforge.cli import main

    assert main(["data", "report", "--run", str(prepared_run)]) == 0  # the funnel and the shards, printed


def test_pareto_rule_keeps_with_probability_two_minus_score_to_the_minus_alpha():
    from chatforge.data.clean.quality import pareto_keep, threshold_keep

    n = 200_000
    for score in (0.0, 0.5, 0.9, 1.0):
        kept = pareto_keep(np.full(n, score), alpha=9, seed=1).mean()
        assert kept == pytest.approx((2 - score) ** -9, abs=0.004)  # P(Lomax(9) > 1 - s) = (2 - s)^-9
    assert list(threshold_keep(np.array([0.2, 0.5, 0.9]), 0.5)) == [False, True, True]
    a, b = pareto_keep(np.full(100, 0.7), seed=3), pareto_keep(np.full(100, 0.7), seed=3)
    assert (a == b).all()  # seeded


def test_quality_classifier_separates_reference_text_from_raw_web():
    from chatforge.data.clean.quality import QualityClassifier

    rng = np.random.default_rng(0)
    towns, rivers = ["Rennu", "Elqui", "Hasu", "Loan", "Briha"], ["Red", "Pine", "Stone", "Silver"]
    ref = [f"The town of {rng.choice(towns)} lies on the {rng.choice(rivers)} River and was founded in "
           f"{rng.integers(1000, 1600)}." for _ in range(60)]
    ref += [f"{t}镇位于{r}河边，建于{rng.integers(1000, 1600)}年。" for t, r in zip(["雷努", "埃尔奎"] * 20, ["赤", "松"] * 20)]
    spam_words = ["cheap", "casino", "free", "win", "click", "deal", "免费", "中奖", "优惠", "点击"]
    web = [" ".join(rng.choice(spam_words, 12)) + " " + rng.choice(towns) for _ in range(100)]
    clf = QualityClassifier().fit(ref[::2] + ref[1::4], web[::2])
    held_ref, held_web = ref[3::4], web[1::2]
    s_ref, s_web = clf.score(held_ref), clf.score(held_web)
    accuracy = (np.sum(s_ref > 0.5) + np.sum(s_web <= 0.5)) / (len(s_ref) + len(s_web))
    assert accuracy >= 0.95 and s_ref.mean() > s_web.mean() + 0.3
    with pytest.raises(ChatforgeError, match="needs reference and raw texts"):
        QualityClassifier().fit([], web)


def test_the_classifier_stage_keeps_reference_like_documents(prepared_run, tmp_path):
    """With the world's encyclopedia as the reference, kept documents lean towards encyclopedia text."""
    ref = tmp_path / "ref.jsonl"
    src = prepared_run / "world" / "raw" / "encyclopedia.jsonl"
    lines = src.read_text().split("\n")
    ref.write_text("\n".join(lines[::2]))  # half of it as the reference
    stats = run_clean(prepared_run, reference=[str(ref)], workers=1)
    c = stats["classifier"]
    assert 0 < c["keep_ratio"] < 1 and stats["documents"]["classifier"] < stats["documents"]["pii"]
    assert stats["removed"]["classifier"]["pareto"] == stats["documents"]["pii"] - stats["documents"]["classifier"]
    docs = [json.loads(x) for x in (prepared_run / "clean" / "docs.jsonl").read_text().split("\n") if x]
    share = sum(d["source"] == "encyclopedia" for d in docs) / len(docs)
    raw_share = len([x for x in lines if x]) / stats["documents"]["input"]
    assert share > 2 * raw_share  # the rule keeps reference-like text far more often
