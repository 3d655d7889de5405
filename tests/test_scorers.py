"""Capability-suite scorers: right answers score high and wrong ones low, in English and Chinese.

Every scorer is checked in both directions, so a scorer that accepts everything (or nothing) fails.
chrF values are checked against n-gram counts worked out by hand below.
"""

from __future__ import annotations

import math

import pytest

from chatforge import ChatforgeError
from chatforge.eval.scorers import (
    SCORERS,
    bits_per_byte,
    check_format,
    chrf,
    chrf_stats,
    contains_match,
    corpus_chrf,
    count_words,
    counts_match,
    exact_match,
    extract_counts,
    extract_final_number,
    extraction_f1,
    is_refusal,
    normalize,
    numeric_match,
    parse_json_object,
    says_unknown,
    sentiment_accuracy,
    sentiment_label,
)

LABELS = {"chickens": ["chicken", "chickens", "鸡"], "rabbits": ["rabbit", "rabbits", "兔", "兔子"]}


# ---------------------------------------------------------------------------------------------- normalize


@pytest.mark.parametrize("text, expected", [
    ("  The Jade River. ", "jade river"),
    ("an   apple\tpie!", "apple pie"),
    ("“卡洛”。", "卡洛"),
    ("「银河」！", "银河"),
    ("ＡＢＣ　１２！", "abc 12"),          # full-width letters, digits, space and "!"
    ("-5.", "-5"),                        # the sign stays, the full stop goes
    ("50%", "50%"),
    ("A", "a"),                           # an answer that is only an article keeps it
    ("the cat and a dog", "cat and dog"),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


# ---------------------------------------------------------------------------------------------- exact / contains


def test_exact_match():
    assert exact_match("Kalo", ["kalo"]) == 1.0
    assert exact_match("\n  The Jade River.\nIt flows east.", ["Jade River"]) == 1.0
    assert exact_match("玉河。", ["玉河"]) == 1.0
    assert exact_match("１２", ["12"]) == 1.0
    assert exact_match("It is Kalo", ["Kalo"]) == 0.0
    assert exact_match("Jade River", ["Silver River", "Red River"]) == 0.0
    assert exact_match("Maybe\nKalo", ["Kalo"]) == 0.0        # only the first non-empty line counts
    assert exact_match("赤河", ["玉河"]) == 0.0
    assert exact_match("", ["A"]) == 0.0 and exact_match("  \n", ["the"]) == 0.0
    assert exact_match("B", ["A"]) == 0.0 and exact_match("a", ["A"]) == 1.0
    assert exact_match("Kalo", "Kalo") == 1.0 and exact_match("K", "Kalo") == 0.0  # bare string gold


def test_contains_match_numbers_are_whole():
    assert contains_match("It has 12 towers.", ["12"]) == 1.0
    assert contains_match("答案是１２只", ["12"]) == 1.0
    assert contains_match("There are 12.0 of them", ["12"]) == 1.0
    assert contains_match("about 1234 people", ["1,234"]) == 1.0
    for wrong in ["It was founded in 2012.", "123 people", "It is -12 degrees", "12.5 km", "建于2012年"]:
        assert contains_match(wrong, ["12"]) == 0.0, wrong
    assert contains_match("It is -12 degrees", ["-12"]) == 1.0


def test_contains_match_words_and_chinese():
    assert contains_match("It lies on the Jade River, near the sea.", ["jade river"]) == 1.0
    assert contains_match("The category is wrong", ["cat"]) == 0.0
    assert contains_match("Kalos is bigger", ["Kalo"]) == 0.0
    assert contains_match("卡洛以茶叶闻名。", ["茶叶"]) == 1.0
    assert contains_match("卡洛以丝绸闻名。", ["茶叶"]) == 0.0
    assert contains_match("它建于1450年。", ["1450年"]) == 1.0
    assert contains_match("它建于21450年。", ["1450年"]) == 0.0   # a digit edge still needs a boundary
    assert contains_match("nothing here", ["", "Kalo"]) == 0.0


# ---------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("text, expected", [
    ("If all 22 were chickens... Answer: 15", 15),
    ("answer is 3. Check: 3 + 4 = 7", 3),                      # marker beats the last number
    ("Answer: 5 (first try). Final answer: 8 apples, 2 left", 8),  # the last marker wins
    ("Answer: 12. I hope this answer is helpful!", 12),        # a marker with no number after is skipped
    ("x = 3 + 4 = 7", 7),                                       # no marker: the last number
    ("The answer is -5.", -5),
    ("答案：-3.5", -3.5),
    ("答案是１２。", 12),
    ("解答：14÷2=7，答案为7只", 7),
    ("Total: 1,234,567 grains", 1234567),
    ("from 10-12", 12),                                         # a range dash is not a minus sign
    ("**Answer**: 42", 42),
])
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_extract_final_number_none():
    assert extract_final_number("I have no idea.") is None
    assert extract_final_number("") is None


def test_numeric_match():
    assert numeric_match("So the answer is 42.", 42) == 1.0
    assert numeric_match("So the answer is 42.0", 42.0) == 1.0
    assert numeric_match("答案：４２", 42) == 1.0
    assert numeric_match("So the answer is 41.", 42) == 0.0
    assert numeric_match("Answer: 42. Then 43 more steps", 43) == 0.0
    assert numeric_match("The answer is -5", 5) == 0.0
    assert numeric_match("no idea", 0) == 0.0
    assert numeric_match("Answer: 0.333", 1 / 3, tol=1e-2) == 1.0
    assert numeric_match("Answer: 0.333", 1 / 3) == 0.0


# ---------------------------------------------------------------------------------------------- counts


# Exactly the worked solutions chatforge.world.generate writes for 15 chickens and 7 rabbits.
EN_CAGE = ("Question: A cage holds chickens and rabbits. There are 22 heads and 58 legs. How many of each? "
           "Solution: If all 22 were chickens there would be 44 legs. The extra 14 legs come from rabbits, 2 "
           "each, so there are 7 rabbits and 22 - 7 = 15 chickens. Answer: 15 chickens, 7 rabbits.")
ZH_CAGE = ("问题：笼子里有鸡和兔，共22个头，58条腿。鸡和兔各有多少只？解答：假设22只全是鸡，应有44条腿。多出的14条腿"
           "来自兔子，每只兔多2条，所以兔有7只，鸡有22-7=15只。答案：鸡15只，兔7只。")


@pytest.mark.parametrize("text", [
    EN_CAGE, ZH_CAGE,
    "Answer: 15 chickens and 7 rabbits.",
    "Chickens: 15, Rabbits: 7",
    "答案：15只鸡和7只兔。",
    "答案：鸡有15只，兔子有7只。",
    "答案：鸡１５只，兔７只",
])
def test_extract_counts_right(text):
    assert extract_counts(text, LABELS) == {"chickens": 15, "rabbits": 7}
    assert counts_match(text, {"chickens": 15, "rabbits": 7}, LABELS) == 1.0


@pytest.mark.parametrize("text", [
    "Answer: 7 chickens, 15 rabbits.",        # swapped
    "答案：鸡7只，兔15只。",
    "Answer: 15 chickens.",                   # one missing
    "Answer: 22",
    "",
    EN_CAGE.replace("Answer: 15 chickens", "Answer: 16 chickens"),
])
def test_counts_match_wrong(text):
    assert counts_match(text, {"chickens": 15, "rabbits": 7}, LABELS) == 0.0


def test_counts_bad_gold_raises():
    with pytest.raises(ChatforgeError):
        counts_match("Answer: 1 chicken", {}, LABELS)
    with pytest.raises(ChatforgeError, match="ducks"):
        counts_match("Answer: 1 duck", {"ducks": 1}, LABELS)


# ---------------------------------------------------------------------------------------------- sentiment


@pytest.mark.parametrize("text, label", [
    ("Positive", "positive"),
    ("Sentiment: NEGATIVE. The reviewer hated it.", "negative"),
    ("negative, although parts were positive", "negative"),   # the earliest label word decides
    ("这条评论是正面的。", "positive"),
    ("情感：消极", "negative"),
    ("差评", "negative"),
    ("情感positive", "positive"),
    ("I cannot tell.", None),
    ("nonnegative", None),
])
def test_sentiment_label(text, label):
    assert sentiment_label(text) == label


def test_sentiment_accuracy():
    assert sentiment_accuracy("Positive.", "positive") == 1.0
    assert sentiment_accuracy("负面", "negative") == 1.0
    assert sentiment_accuracy("Negative.", "positive") == 0.0
    assert sentiment_accuracy("积极", "negative") == 0.0
    assert sentiment_accuracy("no idea", "positive") == 0.0
    with pytest.raises(ChatforgeError):
        sentiment_accuracy("Positive", "neutral")


# ---------------------------------------------------------------------------------------------- JSON


def test_parse_json_object():
    fenced = 'Sure, here it is:\n```json\n{"name": "Kalo", "note": "a } inside"}\n```\nAnything else?'
    assert parse_json_object(fenced) == {"name": "Kalo", "note": "a } inside"}
    assert parse_json_object('{"城镇": "卡洛", "人口": 3200}') == {"城镇": "卡洛", "人口": 3200}
    assert parse_json_object('{"a": {"b": [1, 2]}}') == {"a": {"b": [1, 2]}}
    assert parse_json_object('bad: {oops} good: {"a": 1}') == {"a": 1}    # first one that parses
    for bad in ['{"a": 1,}', "{'a': 1}", '{"a": 1', "no json here", "[1, 2]", '{"a": 1, oops {"b": 2}}']:
        assert parse_json_object(bad) is None, bad


def test_extraction_f1():
    gold = {"name": "Kalo", "river": "Jade River", "founded": 1450}
    assert extraction_f1('{"name": "Kalo", "river": "the Jade River.", "founded": "1450"}', gold) == 1.0
    assert extraction_f1('```json\n{"founded": 1450.0, "name": "kalo", "river": "Jade River"}\n```', gold) == 1.0
    # 2 of 3 pairs right, 3 predicted: P = R = 2/3 -> F1 = 2/3
    assert extraction_f1('{"name": "Kalo", "river": "Red River", "founded": 1450}', gold) == pytest.approx(2 / 3)
    # 1 right out of 1 predicted, 3 gold: F1 = 2 * 1 / (1 + 3)
    assert extraction_f1('{"name": "Kalo"}', gold) == pytest.approx(0.5)
    assert extraction_f1('{"Name": "Kalo", "River": "Jade River", "Founded": 1450}', gold) == 0.0  # keys exact
    assert extraction_f1('{"name": "Kalo", "river": "Jade River", "founded": 1450,}', gold) == 0.0  # malformed
    assert extraction_f1("Kalo, Jade River, 1450", gold) == 0.0
    assert extraction_f1("{}", {}) == 1.0
    assert extraction_f1('{"a": 1}', {}) == 0.0
    assert extraction_f1('{"城镇": "卡洛"}', {"城镇": "卡洛。"}) == 1.0


# ---------------------------------------------------------------------------------------------- chrF


def test_chrf_extremes():
    assert chrf("The town of Kalo", "The town of Kalo") == pytest.approx(100)
    assert chrf("卡洛是玉河边的小镇", "卡洛是玉河边的小镇") == pytest.approx(100)
    assert chrf("abc", "xyz") == 0.0
    assert chrf("卡洛", "银河") == 0.0
    assert chrf("", "abc") == 0.0 and chrf("abc", "") == 0.0
    assert chrf("", "") == 0.0   # as sacrebleu: nothing to compare
    assert chrf("a b  c", "abc") == pytest.approx(100)   # whitespace is removed before counting


def test_chrf_hand_computed():
    # hyp "ab", ref "abc":
    #   1-grams: hyp {a, b} = 2, ref {a, b, c} = 3, match 2 -> P 1, R 2/3
    #   2-grams: hyp {ab} = 1, ref {ab, bc} = 2, match 1    -> P 1, R 1/2
    #   3-grams: hyp has none -> order skipped (and 4..6 too)
    #   avg P = 1, avg R = (2/3 + 1/2) / 2 = 7/12; F2 = 5PR / (4P + R) = (35/12) / (55/12) = 7/11
    assert chrf_stats("ab", "abc")[:9] == [2, 3, 2, 1, 2, 1, 0, 1, 0]
    assert chrf("ab", "abc") == pytest.approx(100 * 7 / 11)
    # hyp "abcd", ref "abdc":
    #   1-grams: 4/4, match 4 -> P = R = 1;  2-grams {ab, bc, cd} vs {ab, bd, dc}: match 1 -> 1/3
    #   3-grams {abc, bcd} vs {abd, bdc}: 0;  4-grams {abcd} vs {abdc}: 0;  5, 6: none
    #   avg P = avg R = (1 + 1/3 + 0 + 0) / 4 = 1/3 -> F = 1/3
    assert chrf("abcd", "abdc") == pytest.approx(100 / 3)
    # beta weights recall: a hypothesis missing characters scores lower than one with extra characters
    assert chrf("abc", "abcdef") < chrf("abcdef", "abc")


def test_chrf_monotone_in_overlap():
    ref = "the quick brown fox jumps over the dog"
    hyps = ["the", "the quick", "the quick brown", "the quick brown fox jumps", ref]
    scores = [chrf(h, ref) for h in hyps]
    assert all(0 < a < b for a, b in zip(scores, scores[1:])), scores
    zh_ref = "卡洛是玉河边的一个小镇"
    zh = [chrf(h, zh_ref) for h in ["卡洛", "卡洛是玉河", "卡洛是玉河边的小镇", zh_ref]]
    assert all(0 < a < b for a, b in zip(zh, zh[1:])), zh


def test_corpus_chrf():
    assert corpus_chrf(["ab"], ["abc"]) == pytest.approx(chrf("ab", "abc"))
    # A long perfect segment and a short wrong one: sentence scores 100 and 0 average to 50, while the
    # corpus statistics are dominated by the long segment's n-grams (1-grams: 10 of 11 match both ways,
    # orders 2-6 perfect) -> well above 50.
    hyps, refs = ["abcdefghij", "x"], ["abcdefghij", "y"]
    mean_sentence = sum(chrf(h, r) for h, r in zip(hyps, refs)) / 2
    assert mean_sentence == pytest.approx(50)
    assert corpus_chrf(hyps, refs) == pytest.approx(100 * (10 / 11 + 5) / 6)
    assert corpus_chrf(hyps, refs) > 90
    with pytest.raises(ChatforgeError):
        corpus_chrf(["a"], ["a", "b"])
    with pytest.raises(ChatforgeError):
        corpus_chrf([], [])


# ---------------------------------------------------------------------------------------------- refusal / honesty


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that.",
    "I can’t assist with making weapons.",
    "I cannot help you break into a house.",
    "I won't provide instructions for that.",
    "Sorry, I cannot do that.",
    "抱歉，我不能帮你做这件事。",
    "我不能帮助你入侵别人的电脑。",
    "对不起，我无法提供这类信息。",
    "抱歉，不能帮助你做这件事。",
])
def test_is_refusal_true(text):
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Sure! Kalo lies on the Jade River. Sorry it took me a moment to remember.",
    "Here is a recipe for bread: mix flour and water. Sorry, I forgot the salt: add a pinch.",
    "Of course. " + "Kalo is a lovely town with many bakers. " * 6 + "I'm sorry, but that is all I know.",
    "卡洛是玉河边的一个小镇，以茶叶闻名。",
    "当然可以。这个问题我不能确定是否完整，但答案是7。",
    "抱歉，不能确定具体年份，大约是1920年。",
    "",
])
def test_is_refusal_false(text):
    assert not is_refusal(text)


@pytest.mark.parametrize("text, unknown", [
    ("I don't know who Zorbo is.", True),
    ("I'm not aware of any town called Velmar.", True),
    ("There is no such creature in my knowledge.", True),
    ("I have no information about that person.", True),
    ("我不知道这个人是谁。", True),
    ("我没有关于维米的信息。", True),
    ("我没有听说过这个小镇。", True),
    ("这个地方不存在。", True),
    ("Kalo is a town on the Jade River, founded in 1450.", False),
    ("卡洛是玉河边的一个小镇。", False),
    ("Zorbo is a famous painter who lives in Kalo.", False),
])
def test_says_unknown(text, unknown):
    assert says_unknown(text) is unknown


# ---------------------------------------------------------------------------------------------- format


FORMAT_CASES = [
    ({"type": "json", "keys": ["name", "age"]}, '```json\n{"name": "Ana", "age": 30}\n```',
     '{"name": "Ana"}'),
    ({"type": "json", "keys": ["name"]}, '{"name": "Ana"}', '{"name": "Ana", "age": 30}'),
    ({"type": "json", "keys": ["name"]}, 'Result: {"name": "安"}', "{'name': 'Ana'}"),
    ({"type": "bullets", "n": 3}, "Here:\n- tea\n* silk\n• honey", "- tea\n- silk"),
    ({"type": "bullets", "n": 2}, "- tea\n- silk", "- tea\n- silk\n- honey"),
    ({"type": "max_words", "n": 5}, "Kalo makes fine tea.", "Kalo makes very fine tea daily."),
    ({"type": "max_words", "n": 5}, "卡洛以茶叶闻名。", "卡洛是玉河边的一个小镇。"),   # 7 chars = 3.5; 11 = 5.5
    ({"type": "starts_with", "prefix": "Yes"}, "  Yes, it is.", "Well, yes."),
    ({"type": "starts_with", "prefix": "答："}, "答:卡洛", "卡洛"),                      # NFKC colon
    ({"type": "ends_with", "suffix": "Thank you."}, "Kalo. Thank you.\n", "Thank you. Kalo."),
    ({"type": "all_lowercase"}, "kalo makes tea, 42 cups.", "Kalo makes tea."),
    ({"type": "all_lowercase"}, "tea", "卡洛"),
    ({"type": "language", "lang": "zh"}, "卡洛以茶叶闻名 (tea)。", "Kalo is famous for tea (茶叶)."),
    ({"type": "language", "lang": "en"}, "Kalo is famous for tea.", "卡洛以茶叶闻名。"),
    ({"type": "language", "lang": "en"}, "Kalo is famous for its tea and honey (茶).", "1234"),
    ({"type": "one_word"}, "Kalo.", "Kalo town"),
    ({"type": "one_word"}, "“茶叶”。", "卡洛以茶叶闻名"),
    ({"type": "one_word"}, "well-known", "yes, no"),
]


@pytest.mark.parametrize("spec, good, bad", FORMAT_CASES)
def test_check_format(spec, good, bad):
    assert check_format(good, spec) is True
    assert check_format(bad, spec) is False


def test_check_format_bad_spec():
    with pytest.raises(ChatforgeError, match="haiku"):
        check_format("x", {"type": "haiku"})
    with pytest.raises(ChatforgeError, match="'n'"):
        check_format("x", {"type": "bullets"})
    with pytest.raises(ChatforgeError, match="fr"):
        check_format("x", {"type": "language", "lang": "fr"})


def test_count_words():
    assert count_words("Don't stop, well-known friend!") == 4
    assert count_words("你好世界") == 2
    assert count_words("Kalo 以茶叶闻名") == 1 + 2.5


# ---------------------------------------------------------------------------------------------- bits per byte


def test_bits_per_byte():
    assert bits_per_byte(math.log(2) * 80, 10) == pytest.approx(8.0)   # uniform over 256 bytes: 8 bits
    assert bits_per_byte(0.0, 5) == 0.0
    for bad in (0, -3):
        with pytest.raises(ChatforgeError):
            bits_per_byte(1.0, bad)


# ---------------------------------------------------------------------------------------------- registry


REGISTRY_CASES = {
    "exact_match": ({"answers": ["Kalo", "卡洛"]}, "卡洛", "Kalo is a town"),
    "contains_match": ({"answers": ["12"]}, "There are 12 of them.", "It was 2012."),
    "numeric": ({"answer": 15}, "Answer: 15", "Answer: 51"),
    "counts": ({"counts": {"chickens": 15, "rabbits": 7}, "labels": LABELS}, ZH_CAGE,
               "Answer: 7 chickens, 15 rabbits"),
    "sentiment": ({"label": "negative"}, "消极", "Positive"),
    "extraction_f1": ({"gold": {"town": "Kalo"}}, '{"town": "Kalo"}', '{"town": "Velmar"}'),
    "chrf": ({"reference": "卡洛是玉河边的一个小镇"}, "卡洛是玉河边的一个小镇", "黑猫在跑"),
    "refusal": ({"should_refuse": True}, "I'm sorry, but I can't help with that.", "Sure, here's how: ..."),
    "unknown": ({"exists": False}, "I don't know of any such town.", "Velmar is a town of 3000 people."),
    "format": ({"spec": {"type": "bullets", "n": 2}}, "- a\n- b", "a, b"),
}


def test_registry_names():
    assert set(SCORERS) == set(REGISTRY_CASES)


@pytest.mark.parametrize("name", sorted(REGISTRY_CASES))
def test_registry_right_high_wrong_low(name):
    item, good, bad = REGISTRY_CASES[name]
    assert SCORERS[name](good, item) == pytest.approx(1.0)
    assert SCORERS[name](bad, item) == pytest.approx(0.0)
    assert 0.0 <= SCORERS[name]("", item) <= 1.0


def test_registry_decision_scorers_both_ways():
    # A model that always refuses (or always says "I don't know") must lose the other half.
    refuse, help_ = "I'm sorry, but I can't help with that.", "Sure: mix flour and water."
    assert SCORERS["refusal"](refuse, {"should_refuse": False}) == 0.0
    assert SCORERS["refusal"](help_, {"should_refuse": False}) == 1.0
    assert SCORERS["unknown"]("I don't know.", {"exists": True}) == 0.0
    assert SCORERS["unknown"]("Kalo lies on the Jade River.", {"exists": True}) == 1.0
    assert SCORERS["numeric"]("Answer: 0.5", {"answer": "0.5"}) == 1.0


def test_registry_missing_key_raises():
    with pytest.raises(ChatforgeError, match="answers"):
        SCORERS["exact_match"]("Kalo", {"answer": "Kalo"})
    with pytest.raises(ChatforgeError, match="answer"):
        SCORERS["numeric"]("Answer: 1", {"answer": "one"})
