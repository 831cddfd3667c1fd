"""Shared fixtures: a tiny tokenizer and a tiny random-init model folder, built once per test session.
The model's output is gibberish, so tests that use it assert structure and behaviour, never words."""

import json
import sys
import types
from pathlib import Path

import pytest
import torch

TINY_VOCAB = 320


def _corpus():
    # pydoc's topic help ships with CPython: a few hundred KB of real English, offline
    from pydoc_data.topics import topics
    return iter(topics.values())


@pytest.fixture(scope="session")
def tokenizer():
    from nanoocr.tokenizer import Tokenizer
    return Tokenizer.train(_corpus(), TINY_VOCAB)


@pytest.fixture(scope="session")
def tok_dir(tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(d))
    return d


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory):
    """A model folder (config.json, model.safetensors, tokenizer.json) for the random `tiny` preset."""
    from nanoocr.checkpoint import save_model
    from nanoocr.model import NanoDeepseekOCR
    from nanoocr.presets import get_preset
    state = torch.random.get_rng_state()
    torch.manual_seed(1234)
    model = NanoDeepseekOCR(get_preset("tiny", vocab_size=tokenizer.vocab_size)).init_weights()
    # nanochat zero-inits the head: every logit would be equal and the output would not depend on the image
    torch.nn.init.normal_(model.gpt.lm_head.weight, std=0.3)
    torch.random.set_rng_state(state)
    model.image_token_id = tokenizer.image_id
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny", tokenizer=tokenizer, meta={"preset": "tiny"})


class StandInTokenizer:
    """The tokenizer API that checkpoint.py and weights.py rely on: their plumbing tested on its own."""

    def __init__(self, vocab_size, image_id):
        self.vocab_size, self.image_id = vocab_size, image_id

    def save(self, path):
        (Path(path) / "tokenizer.json").write_text(json.dumps(vars(self)))

    @classmethod
    def from_directory(cls, path):
        return cls(**json.loads((Path(path) / "tokenizer.json").read_text()))


@pytest.fixture
def stand_in_tokenizer(monkeypatch):
    """The StandInTokenizer class, installed as nanoocr.tokenizer.Tokenizer for the test."""
    monkeypatch.setitem(sys.modules, "nanoocr.tokenizer", types.SimpleNamespace(Tokenizer=StandInTokenizer))
    return StandInTokenizer
