"""Shared fixtures: a tiny tokenizer and a tiny random-init model folder, built once per test session.
The model's output is gibberish, so tests that use it assert structure and behaviour, never words."""

import pytest
import torch

TINY_VOCAB = 320


def _corpus():
    # pydoc's topic help ships with CPython: a few hundred KB of real English, offline
    from pydoc_data.topics import topics
    return iter(topics.values())


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module: a tiny model is all overhead, and one thread does not stall on a busy
    machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tokenizer():
    from nanoocr.tokenizer import Tokenizer
    return Tokenizer.train(_corpus(), TINY_VOCAB)


@pytest.fixture(scope="session")
def tok_dir(tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(str(d))
    return d


def tiny_model(seed=0, image_token_id=None, head_std=0.3, **preset):
    """The one tiny-model factory: the random `tiny` preset (fields overridden by **preset), initialised after
    torch.manual_seed(seed). nanochat zero-inits the head, so every logit would be equal and the output would
    not depend on the image: the head is redrawn with std head_std (0 keeps nanochat's zero head)."""
    from nanoocr.model import NanoDeepseekOCR
    from nanoocr.presets import get_preset
    torch.manual_seed(seed)
    model = NanoDeepseekOCR(get_preset("tiny", **preset)).init_weights()
    if head_std:
        torch.nn.init.normal_(model.gpt.lm_head.weight, std=head_std)
    model.image_token_id = image_token_id
    return model


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory):
    """A model folder (config.json, model.safetensors, tokenizer.json) for the random `tiny` preset."""
    from nanoocr.checkpoint import save_model
    state = torch.random.get_rng_state()
    model = tiny_model(1234, tokenizer.image_id, vocab_size=tokenizer.vocab_size)
    torch.random.set_rng_state(state)
    return save_model(model, tmp_path_factory.mktemp("models") / "tiny", tokenizer=tokenizer, meta={"preset": "tiny"})


def byte_tokenizer(vocab_size, image_id):
    """A real Tokenizer without training: the 256 byte tokens, <|image|> at `image_id`, the other special
    tokens after the bytes, the last one at vocab_size - 1 (for tests of vocab and id plumbing)."""
    from nanoocr.tokenizer import IMAGE, SPECIAL_TOKENS, Tokenizer
    others = [t for t in SPECIAL_TOKENS if t != IMAGE]
    ids = [i for i in range(256, vocab_size) if i != image_id][:len(others) - 1] + [vocab_size - 1]
    if vocab_size - 1 == image_id or len(ids) < len(others) or not 256 <= image_id < vocab_size:
        raise ValueError(f"no byte tokenizer with {vocab_size} tokens and <|image|> at {image_id}")
    return Tokenizer({bytes([b]): b for b in range(256)}, {**dict(zip(others, ids)), IMAGE: image_id})
