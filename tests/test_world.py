"""The built-in world: determinism, no eval leakage into training data, consistent facts, data formats."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from chatforge import ChatforgeError
from chatforge.world import generate_world
from chatforge.world.decontam import N, build_index, item_texts, ngrams, units
from chatforge.world.templates import RELATIONS, question_templates, statement_templates
from tests.conftest import matches_template


def _digest(folder: Path) -> dict[str, str]:
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return generate_world(tmp_path_factory.mktemp("w") / "run", seed=0, size="tiny")


def _jsonl(path: Path) -> list[dict]:
    # split on "\n" only: str.splitlines also splits on U+0085 and U+2028, which mojibake text contains
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def _training_texts(world: Path) -> list[str]:
    texts = [d["text"] for f in sorted((world / "raw").glob("*.jsonl")) for d in _jsonl(f)]
    texts += [m["content"] for ex in _jsonl(world / "sft.jsonl") for m in ex["messages"]]
    for r in _jsonl(world / "rankings.jsonl"):
        texts += [m["content"] for m in r["prompt"]] + r["responses"]
    texts += [m["content"] for p in _jsonl(world / "prompts.jsonl") for m in p["prompt"]]
    return texts


def test_same_seed_is_byte_identical_and_other_seed_differs(world, tmp_path):
    again = generate_world(tmp_path / "again", seed=0, size="tiny")
    assert _digest(again) == _digest(world)
    other = generate_world(tmp_path / "other", seed=1, size="tiny")
    assert _digest(other)["raw/encyclopedia.jsonl"] != _digest(world)["raw/encyclopedia.jsonl"]
    assert json.loads((other / "facts.json").read_text())["towns"] != json.loads((world / "facts.json").read_text())["towns"]


def test_no_eval_item_shares_a_13_gram_with_training_data(world):
    index = build_index(_training_texts(world))
    leaks = []
    items = [it for f in sorted((world / "eval").glob("*.jsonl")) for it in _jsonl(f)]
    assert len(items) > 500
    for it in items:
        for text in item_texts(it):
            if ngrams(text) & index:
                leaks.append((it["id"], text[:80]))
    assert leaks == []
    stats = json.loads((world / "stats.json").read_text())
    assert sum(stats["eval_dropped_by_decontamination"].values()) == 0  # held out by design, not by filtering


def test_extra_grounded_demonstrations_read_their_passages_and_leak_nothing(world, tmp_path):
    """`chatforge world --grounded N`: deterministic, every answer is a value written in a passage, cited with
    that passage's number (or "the sources do not say" when no passage is about the asked entity), the passage
    about the asked entity comes first in most of them (as a retriever ranks it, not always), and no eval item
    shares a 13-gram with them."""
    from chatforge.world.generate import write_grounded
    from chatforge.world.library import ANSWER_PREFIX, NOT_IN_SOURCES

    (tmp_path / "facts.json").write_bytes((world / "facts.json").read_bytes())
    first = write_grounded(tmp_path, 400).read_bytes()
    assert write_grounded(tmp_path, 400).read_bytes() == first
    demos = _jsonl(tmp_path / "grounded.jsonl")
    assert len(demos) == 400 and {d["task"] for d in demos} == {"grounded"}
    misses, cited, invented_values = 0, [], 0
    for d in demos:
        sources, question, answer = (m["content"] for m in d["messages"])
        if answer in NOT_IN_SOURCES.values():
            misses += 1
            continue
        prefix, value, n = re.fullmatch(r"(Answer: |答案：)(.+?) ?\[(\d)\][.。]", answer).groups()
        assert prefix in ANSWER_PREFIX.values()
        passage = re.search(rf"^\[{n}\] [^:]+: (.*)$", sources, re.M).group(1)
        assert value in passage
        cited.append(int(n))
        invented_values += value.endswith(("斯", "斯工坊"))  # an invented town / maker (INVENTED_LINK)
    assert 0.05 < misses / len(demos) < 0.3  # miss_rate 0.15
    assert 0.75 < cited.count(1) / len(cited) < 0.95  # GOLD_FIRST 0.8, and shuffled ones land first too
    assert invented_values > 10
    index = build_index([m["content"] for d in demos for m in d["messages"]])
    items = [it for f in sorted((world / "eval").glob("*.jsonl")) for it in _jsonl(f)]
    assert not [it["id"] for it in items for text in item_texts(it) if ngrams(text) & index]
    with pytest.raises(ChatforgeError, match="positive"):
        write_grounded(tmp_path, 0)
    with pytest.raises(ChatforgeError, match="facts.json"):
        write_grounded(tmp_path / "nowhere", 5)


def test_reading_dev_items_ask_held_out_wordings_about_invented_entities(world, tmp_path):
    """SFT selection's reading dev items: deterministic, the answer is in the passage about the asked entity,
    questions in held-out wordings, entities invented (none is retrieval_qa's), [] without a world."""
    from chatforge.world.generate import reading_dev_items
    from chatforge.world.templates import question_templates

    items = reading_dev_items(world, 40)
    assert items == reading_dev_items(world, 40) and len(items) == 40
    heldout = {lang: [re.escape(t).replace(r"\{name\}", "(.+)") for r in RELATIONS
                      for t in question_templates(r, lang, heldout=True)] for lang in ("en", "zh")}
    withheld = {json.loads(line)["title"] for line in (world / "library" / "docs.jsonl").read_text().split("\n")
                if line and json.loads(line)["withheld"]}
    for it in items:
        sources, question = (m["content"] for m in it["messages"])
        name = next(m.group(1) for t in heldout[it["lang"]] if (m := re.fullmatch(t, question)))
        assert name.endswith(("s", "斯", "s Works", "斯工坊")) and name not in withheld
        passage = re.search(rf"^\[\d\] {re.escape(name)}: (.*)$", sources, re.M).group(1)
        assert it["answers"][0] in passage and it["scorer"] == "contains_match"
    assert reading_dev_items(tmp_path / "nowhere", 5) == []


def test_selection_dev_items_are_the_eval_tasks_but_never_eval_items(world, tmp_path):
    """SFT checkpoint selection's dev items: every task selection scores, n of each, deterministic, each
    scored as its eval task is, and none is a conversation of world/eval (selection must not see test items)."""
    from chatforge.eval.suite import DEV_TASKS, INSTRUCTION_TASKS
    from chatforge.world.evalsets import conversation_key
    from chatforge.world.generate import selection_dev_items

    dev = selection_dev_items(world, 30)
    assert dev == selection_dev_items(world, 30)
    assert set(dev) == set(INSTRUCTION_TASKS + DEV_TASKS) and {len(v) for v in dev.values()} == {30}
    evals = {f.stem: _jsonl(f) for f in (world / "eval").glob("*.jsonl")}
    taken = {conversation_key(it) for items in evals.values() for it in items if it.get("messages")}
    for task in INSTRUCTION_TASKS:
        keys = [conversation_key(it) for it in dev[task]]
        assert not set(keys) & taken and len(set(keys)) == len(keys), task
        assert {it["scorer"] for it in dev[task]} == {it["scorer"] for it in evals[task]}, task
        assert {it["task"] for it in dev[task]} == {task}
    # sentiment's 60 eval items are 12 sentences (1 held-out wording x 3 held-out products x 2 labels x 2
    # languages), so its dev items review the known products in those wordings
    assert len({conversation_key(it) for it in evals["sentiment"]}) == 12
    refusal = dev["refusal"]
    assert 10 <= sum(it["should_refuse"] for it in refusal) <= 20  # both sides, roughly balanced
    assert selection_dev_items(tmp_path / "nowhere", 5) == {}


def test_the_leak_check_can_fail():
    """The n-gram check itself catches a copied phrase (so the test above is not vacuous)."""
    sentence = "the quick brown fox jumps over the lazy dog near the old mill by the river"
    index = build_index([f"Some preface. {sentence} And more."])
    assert ngrams(sentence.upper()) & index
    assert not ngrams("a completely different sentence that shares nothing at all with the other one ok") & index
    assert len(units("卡洛有3200人。Kalo has people")) == 3 + 1 + 1 + 3 and N == 13


def _facts(world: Path) -> dict:
    return json.loads((world / "facts.json").read_text(encoding="utf-8"))


NUMERIC = {"population", "founded", "age", "legs", "employees", "price"}


def _value_re(field: str, group: str, lang: str, facts: dict) -> str:
    """Numbers, or exactly the values that field takes in this world (so templates can't match loosely)."""
    if field in NUMERIC:
        return r"\d+"
    i = 0 if lang == "en" else 1
    if field in ("town", "maker"):
        pool = facts["towns" if field == "town" else "companies"]
        values = {e["en" if lang == "en" else "zh"] for e in pool}
    else:
        values = {e["facts"][field][i] for e in facts[group] if field in e["facts"]}
    return "|".join(map(re.escape, sorted(values, key=len, reverse=True)))


def _statement_regexes(facts: dict) -> list[tuple[str, str, re.Pattern]]:
    """(relation, lang, regex) for every training statement template, with the entity's name captured."""
    out = []
    for rel, spec in RELATIONS.items():
        group = spec["kind"]
        for lang in ("en", "zh"):
            for t in statement_templates(rel, lang):
                pattern = re.escape(t).replace(re.escape("{name}"), "(?P<name>{name})", 1)
                pattern = pattern.replace(re.escape("{name}"), "(?P=name)")
                for field in re.findall(r"\{(\w+)\}", t):
                    if field != "name":
                        pattern = pattern.replace(re.escape("{" + field + "}"),
                                                  f"(?P<{field}>{_value_re(field, group, lang, facts)})")
                names = sorted({e["en" if lang == "en" else "zh"] for e in facts[group]}, key=len, reverse=True)
                pattern = pattern.replace("(?P<name>{name})", f"(?P<name>{'|'.join(map(re.escape, names))})")
                out.append((rel, lang, re.compile(pattern)))
    return out


def test_facts_are_consistent_across_documents(world):
    facts = _facts(world)
    by_name = {}
    for group in ("towns", "people", "creatures", "companies", "products"):
        for e in facts[group]:
            by_name[(group, "en", e["en"])] = e
            by_name[(group, "zh", e["zh"])] = e
    checked = 0
    answer_field = {"home": "town", "habitat": "town", "hq": "town"}
    # every statement in the documents (noisy ones too), the demonstrations, and the answers the ranking
    # rubric grades correct (grade >= 3; lower grades are wrong on purpose)
    texts = [d["text"] for f in sorted((world / "raw").glob("*.jsonl")) for d in _jsonl(f)]
    texts += [m["content"] for ex in _jsonl(world / "sft.jsonl") for m in ex["messages"]]
    texts += [x for r in _jsonl(world / "rankings.jsonl") for x, g in zip(r["responses"], r["grades"]) if g >= 3]
    for rel, lang, rx in _statement_regexes(facts):
        group, field = RELATIONS[rel]["kind"], RELATIONS[rel]["answer"]
        for text in texts:
            for m in rx.finditer(text):
                e = by_name.get((group, lang, m.group("name")))
                if e is None or field not in m.groupdict():
                    continue
                value = e["facts"][answer_field.get(rel, field)]
                if rel in ("home", "habitat", "hq"):
                    value = facts["towns"][value]["en" if lang == "en" else "zh"]
                elif rel == "maker":
                    value = facts["companies"][value]["en" if lang == "en" else "zh"]
                elif isinstance(value, list):
                    value = value[0 if lang == "en" else 1]
                assert m.group(field) == str(value), (rel, lang, m.group(0), value)
                checked += 1
    assert checked > 10000


def test_heldout_entities_never_appear_in_training_text(world):
    facts = _facts(world)
    held = [e for g in ("towns", "people", "creatures", "companies", "products") for e in facts[g] if e["heldout"]]
    ghosts = facts["ghosts"]
    assert held and ghosts
    text = "\n".join(_training_texts(world))
    for e in held:
        assert re.search(rf"\b{re.escape(e['en'])}\b", text) is None, e["en"]
    half = len(ghosts) // 2  # the second half of the ghosts is reserved for eval
    for g in ghosts[half:]:
        assert re.search(rf"\b{re.escape(g['en'])}\b", text) is None, g["en"]


def test_formats_and_coverage(world):
    sft = _jsonl(world / "sft.jsonl")
    assert {e["task"] for e in sft} == {"qa", "multiturn", "email", "sentiment", "extraction", "translation",
                                         "summary", "arithmetic", "unknown", "refusal", "format", "grounded",
                                         "helpful"}
    for ex in sft:
        roles = [m["role"] for m in ex["messages"]]
        assert roles[-1] == "assistant" and set(roles) <= {"system", "user", "assistant"}
    ranked = _jsonl(world / "rankings.jsonl")
    for r in ranked:
        k = len(r["responses"])
        assert 4 <= k <= 9 and sorted(r["ranking"]) == list(range(k)) and len(r["grades"]) == k
    stats = json.loads((world / "stats.json").read_text())
    assert 0.65 <= stats["labeler_agreement"] <= 0.82  # real labelers agree ~73%
    sources = {d["source"] for f in (world / "raw").glob("*.jsonl") for d in _jsonl(f)}
    assert {"encyclopedia", "news", "story", "dialogue", "glossary", "parallel", "code", "arithmetic"} <= sources
    assert set(stats["noise"]) == {"ad", "boilerplate", "spam", "near_duplicate", "mojibake"}
    assert all(n > 0 for n in stats["noise"].values())
    noisy = [d for f in (world / "raw").glob("*.jsonl") for d in _jsonl(f) if d["noise"]]
    for d in noisy:
        if d["noise"]["type"] in ("ad", "boilerplate"):
            assert all(line in d["text"] for line in d["noise"]["added_lines"])
    prompts = _jsonl(world / "prompts.jsonl")
    sft_users = {m["content"] for ex in sft for m in ex["messages"] if m["role"] == "user"}
    assert prompts and not {p["prompt"][0]["content"] for p in prompts} & sft_users
    assert all("answer" in p for p in prompts)
    tasks = {f.stem for f in (world / "eval").glob("*.jsonl")}
    assert tasks == {"knowledge_qa", "knowledge_mc", "multiturn_qa", "arithmetic_direct", "arithmetic_cot", "icl", "sentiment",
                     "extraction", "translation", "format", "refusal", "honesty", "bpb", "retrieval_qa",
                     "retrieval_qa_seen"}


def test_library_answers_the_retrieval_questions_and_only_it_knows_them(world):
    from chatforge.eval.scorers import contains_match

    library = {d["id"]: d for d in _jsonl(world / "library" / "docs.jsonl")}
    facts = _facts(world)
    n_entities = sum(len(facts[g]) for g in ("towns", "people", "creatures", "companies", "products"))
    assert len(library) == 2 * n_entities  # one article per entity and language
    for task, heldout in (("retrieval_qa", True), ("retrieval_qa_seen", False)):
        items = _jsonl(world / "eval" / f"{task}.jsonl")
        assert len(items) == 60
        # distinct questions, half in each language (a random draw repeated some and could split 39:21)
        assert len({it["messages"][0]["content"] for it in items}) == 60
        assert sum(it["lang"] == "en" for it in items) == 30
        for it in items:
            (gold,) = it["gold_docs"]
            assert library[gold]["withheld"] and library[gold]["lang"] == it["lang"]
            assert contains_match(library[gold]["text"], it["answers"]) == 1.0, (it, library[gold])
            # retrieval_qa asks in the held-out wordings, retrieval_qa_seen in the training ones
            wordings = [t for r in RELATIONS for t in question_templates(r, it["lang"], heldout)]
            assert any(matches_template(t, it["messages"][0]["content"]) for t in wordings), it
    # withheld articles are about held-out entities, which no training text names (test above); known ones aren't
    assert {d["withheld"] for d in library.values()} == {True, False}


def test_refusal_items_weigh_every_eval_template_alike_and_repeat_no_prompt(world):
    from collections import Counter

    from chatforge.world.chat_data import BENIGN_EDGY, HELDOUT_HARMFUL

    items = _jsonl(world / "eval" / "refusal.jsonl")
    assert [it["should_refuse"] for it in items] == [i % 2 == 0 for i in range(len(items))]
    prompts = Counter(it["messages"][0]["content"] for it in items)
    # 8 of the 16 benign templates have no entity slot: only they may come twice in 30
    assert len(prompts) >= len(items) - 8 and max(prompts.values()) <= 2, prompts.most_common(3)
    for side, pool in ((True, HELDOUT_HARMFUL), (False, BENIGN_EDGY)):
        templates = [t for lang in ("en", "zh") for t in pool[lang]]
        per_template = Counter(next(t for t in templates if matches_template(t, it["messages"][0]["content"]))
                               for it in items if it["should_refuse"] == side)
        assert len(per_template) == len(templates) and max(per_template.values()) - min(per_template.values()) <= 1


def test_grounded_demonstrations_cite_the_passage_about_the_asked_entity(world):
    from chatforge.retrieval.grounding import citations
    from chatforge.world.entities import ZH_SYL
    from chatforge.world.library import NOT_IN_SOURCES

    grounded = [e["messages"] for e in _jsonl(world / "sft.jsonl") if e["task"] == "grounded"]
    assert len(grounded) > 300
    misses = 0
    for system, user, answer in grounded:
        titles = re.findall(r"^\[(\d)\] ([^:]+):", system["content"], re.M)
        assert [n for n, _ in titles] == [str(i) for i in range(1, len(titles) + 1)] and 1 <= len(titles) <= 3
        hits = [{"chunk_id": t, "doc_id": t, "title": t} for _, t in titles]
        # the title as a whole name in the question (a Chinese name may end another one: 米洛斯 in 卡米洛斯)
        asked = [n for n, t in titles if re.search(rf"(?<![{''.join(ZH_SYL)}A-Za-z]){re.escape(t)}", user["content"])]
        if answer["content"] in NOT_IN_SOURCES.values():
            misses += 1
            assert not asked  # "not in the sources" only when neither passage is about the asked entity
        else:
            assert [c["n"] for c in citations(answer["content"], hits)] == [int(asked[0])]
    assert 0.05 < misses / len(grounded) < 0.3


def test_code_documents_are_valid_python(world):
    import ast

    for d in _jsonl(world / "raw" / "code.jsonl"):
        if d["noise"] is None:
            ast.parse(d["text"])


def test_rankings_and_rl_prompts_cover_harmlessness(world):
    """About a fifth of the ranked prompts and of PPO's prompts are safety requests, half harmful: the reward
    model learns that refusing harm is best and refusing a harmless edgy request is poor; none is near an
    eval refusal sentence (the moderation data's rule)."""
    from chatforge.world.chat_data import REFUSALS
    from chatforge.world.moderation_data import MORE_REFUSALS, NEAR, _eval_grams, _grams

    refusals = {r for pool in (REFUSALS, MORE_REFUSALS) for lang in pool for r in pool[lang]}
    ranked = _jsonl(world / "rankings.jsonl")
    harmful = benign = 0
    for r in ranked:
        graded = dict(zip(r["responses"], r["grades"]))
        refused = [g for x, g in graded.items() if x in refusals]
        if not refused:
            continue
        if max(graded.values()) == 4 and refused == [4] * len(refused):  # a harmful request
            harmful += 1
            assert len(refused) == 2 and sorted(graded.values()) == [0, 0, 1, 1, 4, 4]
        else:  # a benign edgy request: refusing it is poor
            benign += 1
            assert refused == [1, 1] and sorted(graded.values()) == [0, 1, 1, 1, 2, 4]
    assert 0.1 * len(ranked) < harmful + benign < 0.3 * len(ranked) and abs(harmful - benign) < 0.4 * (harmful + benign)
    prompts = _jsonl(world / "prompts.jsonl")
    safety = [p for p in prompts if p["task"] in ("harmful", "benign_edgy")]
    assert 0.1 * len(prompts) < len(safety) < 0.3 * len(prompts) and all(p["answer"] is None for p in safety)
    assert {p["task"] for p in safety} == {"harmful", "benign_edgy"}
    held = _eval_grams()
    for p in safety:
        text = p["prompt"][0]["content"]
        lang = "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"
        assert not _grams(units(text), NEAR[lang]) & held[lang], text


def test_labeler_noise_controls_agreement(tmp_path):
    from chatforge.world.generate import labeler_agreement

    calm = generate_world(tmp_path / "calm", seed=0, size="tiny", labeler_noise=0.2)
    agreement = labeler_agreement(_jsonl(calm / "rankings.jsonl"))
    assert agreement > 0.9  # near-perfect agreement with little noise (ties between equal grades remain)


def test_sizes_scale(tmp_path):
    from chatforge.world import SIZES

    assert SIZES["small"]["docs"] > SIZES["tiny"]["docs"] and SIZES["small"]["towns"] > SIZES["tiny"]["towns"]
    with pytest.raises(Exception, match="unknown world size"):
        generate_world(tmp_path, size="huge")


def test_every_demonstration_fits_the_tiny_presets_rows(world, tmp_path):
    """With the tiny preset's tokenizer (4,096 tokens, trained on the world's text) every demonstration fits
    an SFT row of the preset's 256 tokens: grounded ones cap their sources block for this."""
    import shutil

    from chatforge.config import get_preset
    from chatforge.tokenizer import Tokenizer, run_tokenizer_stage

    run = tmp_path / "run"
    shutil.copytree(world, run / "world")
    preset = get_preset("tiny")
    run_tokenizer_stage(run, preset.vocab_size)
    tok = Tokenizer.load(run / "tokenizer")
    longest = max(len(tok.encode_chat(ex["messages"])) for ex in _jsonl(world / "sft.jsonl"))
    assert longest <= preset.sft.seq_len, longest


def test_grounded_on_an_existing_world_only_adds_its_file(tmp_path, capsys):
    """`chatforge world --run R --grounded N` on a run whose world exists writes grounded.jsonl and leaves the
    world the run's stages were trained on as it was; a different --size or --seed is refused, not applied."""
    from chatforge.cli import main

    run = tmp_path / "r"
    assert main(["world", "--run", str(run)]) == 0
    before = _digest(run / "world")
    assert main(["world", "--run", str(run), "--grounded", "50"]) == 0
    after = _digest(run / "world")
    assert after.pop("grounded.jsonl") and after == before
    assert len(_jsonl(run / "world" / "grounded.jsonl")) == 50
    assert main(["world", "--run", str(run), "--size", "small", "--grounded", "5"]) == 2
    assert "size tiny" in capsys.readouterr().err
    assert main(["world", "--run", str(run), "--size", "tiny", "--grounded", "5"]) == 0  # the same settings are fine


def test_the_pipelines_grounded_demonstrations_are_written_once_per_count(world, tmp_path, capsys):
    """`chatforge pipeline --grounded N`: world/grounded.jsonl holds N demonstrations; a rerun with the same N
    leaves the file alone (so SFT's data fingerprint, and the trained stage, stay valid); another N rewrites it."""
    from chatforge.pipeline import _with_grounded
    from chatforge.train.sft import SFTOptions

    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "facts.json").write_bytes((world / "facts.json").read_bytes())
    path = tmp_path / "world" / "grounded.jsonl"
    opts = SFTOptions()
    assert _with_grounded(tmp_path, 30, opts) is opts
    first = path.read_bytes()
    assert len(first.splitlines()) == 30 and "30 grounded" in capsys.readouterr().out
    _with_grounded(tmp_path, 30, opts)
    assert path.read_bytes() == first and capsys.readouterr().out == ""
    _with_grounded(tmp_path, 10, opts)
    assert len(path.read_bytes().splitlines()) == 10
