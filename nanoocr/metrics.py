"""
Text scores for OCR output. Every function compares normalize(pred) with normalize(ref):

  normalize  Unicode NFKC (so the ligature 'ﬁ' equals 'fi', full-width letters equal ASCII, and a letter plus
             combining accent equals the precomposed letter), strip, and every run of whitespace, newlines
             included, becomes one space. Case is kept unless lowercase=True. Markdown is not touched.
  cer / wer  Levenshtein edits / reference length, in characters / whitespace-separated words. Not capped:
             a prediction much longer than its reference scores above 1. Empty reference: 0.0 if the
             prediction is empty too, else 1.0.
  ned        OmniDocBench-style normalised edit distance: edits / max(len(pred), len(ref)), in [0, 1];
             0.0 when both are empty. Lower is better.
  fox_*      Fox-benchmark-style bag-of-words scores: matched words = size of the multiset intersection;
             precision = matched / predicted words, recall = matched / reference words, f1 their harmonic
             mean. Both empty: 1.0; exactly one empty: 0.0.

Edit distances come from rapidfuzz (C++), not a Python loop.
"""

import re
import unicodedata
from collections import Counter

from rapidfuzz.distance import Levenshtein

_WS = re.compile(r"\s+")
SCORES = ("cer", "cer_mean", "wer", "ned", "precision", "recall", "f1", "exact")


def normalize(text, lowercase=False):
    text = _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    return text.lower() if lowercase else text


def _words(text):
    return text.split(" ") if text else []


def _rate(edits, n, pred_len):
    # empty reference: nothing to get wrong unless something was predicted
    if n == 0:
        return 0.0 if pred_len == 0 else 1.0
    return edits / n


def char_edits(pred, ref):
    """(Levenshtein edits, normalised reference length, normalised prediction length) in characters."""
    p, r = normalize(pred), normalize(ref)
    return Levenshtein.distance(p, r), len(r), len(p)


def word_edits(pred, ref):
    """(edits, reference words, predicted words) over whitespace-separated words."""
    p, r = _words(normalize(pred)), _words(normalize(ref))
    return Levenshtein.distance(p, r), len(r), len(p)


def cer(pred, ref):
    return _rate(*char_edits(pred, ref))


def wer(pred, ref):
    return _rate(*word_edits(pred, ref))


def ned(pred, ref):
    edits, n_ref, n_pred = char_edits(pred, ref)
    return edits / max(n_ref, n_pred) if max(n_ref, n_pred) else 0.0


def _bag(pred, ref):
    p, r = Counter(_words(normalize(pred))), Counter(_words(normalize(ref)))
    return sum((p & r).values()), sum(p.values()), sum(r.values())


def _ratio(matched, n, other):
    if n == 0:
        return 1.0 if other == 0 else 0.0
    return matched / n


def fox_precision(pred, ref):
    matched, n_pred, n_ref = _bag(pred, ref)
    return _ratio(matched, n_pred, n_ref)


def fox_recall(pred, ref):
    matched, n_pred, n_ref = _bag(pred, ref)
    return _ratio(matched, n_ref, n_pred)


def f1(pred, ref):
    p, r = fox_precision(pred, ref), fox_recall(pred, ref)
    return 2 * p * r / (p + r) if p + r else 0.0


def corpus_scores(pairs):
    """Aggregate scores over (pred, ref) pairs:
    cer / wer   micro: total edits / total reference characters (words); long references weigh more
    cer_mean    mean of per-sample CER; ned, precision, recall, f1: per-sample means
    exact       share of pairs equal after normalize
    An empty list gives n = 0 and NaN scores."""
    pairs = list(pairs)
    if not pairs:
        return {"n": 0, **{k: float("nan") for k in SCORES}}
    ce = [char_edits(p, r) for p, r in pairs]
    we = [word_edits(p, r) for p, r in pairs]
    n = len(pairs)

    def micro(edits):
        return _rate(sum(e for e, _, _ in edits), sum(k for _, k, _ in edits), sum(k for _, _, k in edits))

    return {
        "n": n,
        "cer": micro(ce),
        "cer_mean": sum(_rate(*e) for e in ce) / n,
        "wer": micro(we),
        "ned": sum(ned(p, r) for p, r in pairs) / n,
        "precision": sum(fox_precision(p, r) for p, r in pairs) / n,
        "recall": sum(fox_recall(p, r) for p, r in pairs) / n,
        "f1": sum(f1(p, r) for p, r in pairs) / n,
        "exact": sum(normalize(p) == normalize(r) for p, r in pairs) / n,
    }
