import math

import pytest

from nanoocr.metrics import cer, corpus_scores, f1, fox_precision, fox_recall, ned, normalize, wer


@pytest.mark.parametrize("text, kw, expected", [
    ("", {}, ""),
    ("\n \t\n", {}, ""),
    ("  a \t b\n\nc  ", {}, "a b c"),
    ("\ufb01ne", {}, "fine"),  # ligature
    ("e\u0301", {}, "\u00e9"),  # combining accent composes
    ("\uff21\uff22", {}, "AB"),  # full-width
    ("Abc DEF", {}, "Abc DEF"),
    ("Abc DEF", {"lowercase": True}, "abc def"),
])
def test_normalize(text, kw, expected):
    assert normalize(text, **kw) == expected


@pytest.mark.parametrize("pred, ref, expected", [
    ("", "", 0.0),
    ("abc", "", 1.0),  # empty reference, something predicted
    ("", "abc", 1.0),  # three deletions / 3
    ("hello", "hello", 0.0),
    ("hallo", "hello", 0.2),  # substitution
    ("helllo", "hello", 0.2),  # insertion
    ("helo", "hello", 0.2),  # deletion
    ("abcdef", "ab", 2.0),  # not capped at 1
    ("Hello", "hello", 0.2),  # case counts
    ("\ufb01ne", "fine", 0.0),
    ("cafe\u0301", "caf\u00e9", 0.0),
    ("cafe", "caf\u00e9", 0.25),
    ("\uff21\uff22\uff23", "ABC", 0.0),
    ("  hello   world\n", "hello world", 0.0),
    ("line one\nline two", "line one line two", 0.0),
    ("line one\nline tw", "line one\nline two", 1 / 17),
])
def test_cer(pred, ref, expected):
    assert cer(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("pred, ref, expected", [
    ("", "", 0.0),
    ("a", "", 1.0),
    ("", "a b", 1.0),
    ("the cat sat", "the cat sat", 0.0),
    ("the bat sat", "the cat sat", 1 / 3),
    ("the cat sat down", "the cat sat", 1 / 3),
    ("the sat", "the cat sat", 1 / 3),
    ("the  cat\nsat", "the cat sat", 0.0),
    ("\ufb01ne day", "fine day", 0.0),
    ("a b c d", "x", 4.0),
])
def test_wer(pred, ref, expected):
    assert wer(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("pred, ref, expected", [
    ("", "", 0.0),
    ("a", "", 1.0),
    ("", "ab", 1.0),
    ("abc", "abc", 0.0),
    ("abcd", "abc", 0.25),  # normalised by the longer string
    ("ab", "abcd", 0.5),
    ("axc", "abc", 1 / 3),
    ("abcdef", "ab", 4 / 6),  # never above 1
    ("\ufb01", "fi", 0.0),
    ("a  b\n", "a b", 0.0),
])
def test_ned(pred, ref, expected):
    assert ned(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("pred, ref, expected", [
    ("", "", 1.0),
    ("a", "", 0.0),
    ("", "a", 0.0),
    ("a b c", "a b c", 1.0),
    ("c b a", "a b c", 1.0),  # a bag of words: order is free
    ("a a b", "a b c", 2 / 3),  # the repeated word matches once
    ("a b x y", "a b", 0.5),
    ("\ufb01ne", "fine", 1.0),
    ("A b", "a b", 0.5),
    ("a\nb", "a b", 1.0),
])
def test_fox_precision(pred, ref, expected):
    assert fox_precision(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("pred, ref, expected", [
    ("", "", 1.0),
    ("a", "", 0.0),
    ("", "a", 0.0),
    ("a b", "a b c d", 0.5),
    ("a a b", "a b c", 2 / 3),
    ("a b c d e", "a b", 1.0),
])
def test_fox_recall(pred, ref, expected):
    assert fox_recall(pred, ref) == pytest.approx(expected)


@pytest.mark.parametrize("pred, ref, expected", [
    ("", "", 1.0),
    ("", "a", 0.0),
    ("x", "a", 0.0),
    ("a b", "a b", 1.0),
    ("a b", "a b c d", 2 / 3),  # p = 1, r = 1/2
])
def test_f1(pred, ref, expected):
    assert f1(pred, ref) == pytest.approx(expected)


def test_corpus_scores_by_hand():
    pairs = [("hello world", "hello world"), ("helo", "hello"), ("a b c", "a b d e")]
    s = corpus_scores(pairs)
    # char edits 0 / 11, 1 / 5, 3 / 7 ("c" -> "d", insert " e"); word edits 0 / 2, 1 / 1, 2 / 4
    assert s["n"] == 3
    assert s["cer"] == pytest.approx(4 / 23)
    assert s["cer_mean"] == pytest.approx((0 + 1 / 5 + 3 / 7) / 3)
    assert s["wer"] == pytest.approx(3 / 7)
    assert s["ned"] == pytest.approx((0 + 1 / 5 + 3 / 7) / 3)
    assert s["precision"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert s["recall"] == pytest.approx((1 + 0 + 2 / 4) / 3)
    assert s["f1"] == pytest.approx((1 + 0 + 4 / 7) / 3)
    assert s["exact"] == pytest.approx(1 / 3)


def test_corpus_scores_edge_cases():
    assert corpus_scores([("", "")])["cer"] == 0.0
    assert corpus_scores([("x", "")])["cer"] == 1.0
    assert corpus_scores(iter([("a", "a")]))["exact"] == 1.0  # any iterable
    empty = corpus_scores([])
    assert empty["n"] == 0 and math.isnan(empty["cer"])
