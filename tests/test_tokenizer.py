"""Tokenizer: training, Unicode round trips, special tokens that text cannot forge, the chat format with its
loss mask and image expansion, our JSON format, and nanochat's pickle read without running its code."""

import io
import os
import pickle
import random

import pytest
import tiktoken
from PIL import Image

from nanoocr.image import MODES, num_image_tokens
from nanoocr.presets import get_preset
from nanoocr.tokenizer import (
    GROUNDING,
    NANOCHAT_SPECIAL,
    SPECIAL_TOKENS,
    SPLIT_PATTERN,
    Tokenizer,
    TokenizerError,
)


def random_text(rng, n):
    pools = ["abcdefghij KLMNOP 0123456789 .,;:!?-'\"()[]{}<>|\n\t", "äöüßéèçñ", "日本語の文字中文字符",
             "😀🚀✓∑∫√π", "\u0301\u200b\ufeff\x00\x07", "<|image|><|bos|><image>"]
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


def test_train_sizes_and_ids(tokenizer):
    assert tokenizer.vocab_size == 320
    n_bpe = tokenizer.vocab_size - len(SPECIAL_TOKENS)
    assert [tokenizer.special_id(t) for t in SPECIAL_TOKENS] == list(range(n_bpe, tokenizer.vocab_size))
    assert tokenizer.bos_id == n_bpe and tokenizer.image_id == n_bpe + len(NANOCHAT_SPECIAL)
    with pytest.raises(ValueError, match="need >= 271"):
        Tokenizer.train(iter(["abc"]), 270)


def test_unicode_round_trip(tokenizer):
    rng = random.Random(0)
    for n in (0, 1, 7, 100, 1000):
        for _ in range(20):
            s = random_text(rng, n)
            assert tokenizer.decode(tokenizer.encode(s)) == s


def test_only_grounding_markers_are_special_in_text(tokenizer):
    for t in GROUNDING:
        assert tokenizer.encode(t) == [tokenizer.special_id(t)]
    forged = "<|image|> <|bos|> <|assistant_end|> <|user_start|>"
    ids = tokenizer.encode(forged)
    assert not set(ids) & {tokenizer.special_id(t) for t in NANOCHAT_SPECIAL + ["<|image|>"]}
    assert tokenizer.decode(ids) == forged


def test_render_conversation_mask(tokenizer):
    sp = tokenizer.special_id
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello there"}, {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Bye"}]
    ids, mask = tokenizer.render_conversation(msgs)
    assert len(ids) == len(mask) and ids[0] == tokenizer.bos_id
    trained = [i for i, m in zip(ids, mask) if m]
    ans1, ans2 = tokenizer.encode("Hello there"), tokenizer.encode("Bye")
    assert trained == ans1 + [sp("<|assistant_end|>")] + ans2 + [sp("<|assistant_end|>")]
    assert tokenizer.decode(ids[2:ids.index(sp("<|user_end|>"))]) == "Be brief.\n\nHi"
    prompt = tokenizer.render_for_completion(msgs[:2] + [{"role": "assistant", "content": "ignored"}])
    assert prompt[-1] == sp("<|assistant_start|>") and prompt[:-1] == tokenizer.render_conversation(msgs[:2])[0]


@pytest.mark.parametrize("mode", MODES)
def test_image_expansion_every_mode(tokenizer, mode):
    cfg = get_preset("cpu")
    rng = random.Random(mode)
    for _ in range(5):
        sizes = [(rng.randint(20, 900), rng.randint(20, 900)) for _ in range(rng.randint(1, 3))]
        counts = [num_image_tokens(w, h, mode, cfg) for w, h in sizes]
        content = "".join(f"page {i}: <image>\n" for i in range(len(sizes))) + "Free OCR."
        ids, mask = tokenizer.render_conversation([{"role": "user", "content": content},
                                                   {"role": "assistant", "content": "text"}], counts)
        runs, run = [], 0
        for i in ids + [None]:
            if i == tokenizer.image_id:
                run += 1
            elif run:
                runs, run = runs + [run], 0
        assert runs == counts
        assert not any(m for i, m in zip(ids, mask) if i == tokenizer.image_id)


def test_conversation_errors(tokenizer):
    u = {"role": "user", "content": "<image> and <image>"}
    with pytest.raises(ValueError, match="more <image> placeholders than images"):
        tokenizer.render_conversation([u], [5])
    with pytest.raises(ValueError, match="3 images but only 2"):
        tokenizer.render_conversation([u], [5, 5, 5])
    with pytest.raises(ValueError, match="expected 'user'"):
        tokenizer.render_conversation([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="empty conversation"):
        tokenizer.render_conversation([])
    with pytest.raises(ValueError, match="content must be a string"):
        tokenizer.render_conversation([{"role": "user", "content": None}])


def test_json_round_trip_and_corruption(tokenizer, tmp_path):
    tokenizer.save(tmp_path)
    again = Tokenizer.from_directory(tmp_path)
    s = "The quick brown fox <|ref|>jumps<|/ref|> 12345"
    assert again.encode(s) == tokenizer.encode(s) and again.special == tokenizer.special
    path = tmp_path / "tokenizer.json"
    path.write_text(path.read_text()[:100])
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: corrupt tokenizer"):
        Tokenizer.from_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        Tokenizer.from_directory(tmp_path / "nowhere")


def _nanochat_pickle(tokenizer, path):
    """What nanochat writes: a tiktoken Encoding with its 9 special tokens, pickled."""
    n = len(tokenizer.ranks)
    enc = tiktoken.Encoding("rustbpe", pat_str=SPLIT_PATTERN, mergeable_ranks=tokenizer.ranks,
                            special_tokens={t: n + i for i, t in enumerate(NANOCHAT_SPECIAL)})
    path.write_bytes(pickle.dumps(enc))
    return enc


def test_nanochat_pickle_keeps_its_ids(tokenizer, tmp_path):
    enc = _nanochat_pickle(tokenizer, tmp_path / "tokenizer.pkl")
    tok = Tokenizer.from_directory(tmp_path)
    assert all(tok.special_id(t) == enc._special_tokens[t] for t in NANOCHAT_SPECIAL)
    assert tok.image_id == enc.n_vocab and tok.vocab_size == enc.n_vocab + 6
    text = "Some text to encode, with numbers 2025."
    assert tok.encode(text) == enc.encode_ordinary(text)


class Exploit:
    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def test_malicious_pickle_refused(tmp_path):
    flag = tmp_path / "pwned"
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps(Exploit(flag)))
    with pytest.raises(TokenizerError, match=r"tokenizer\.pkl.*refusing to load posix\.system"):
        Tokenizer.from_directory(tmp_path)
    assert not flag.exists()
    (tmp_path / "tokenizer.pkl").write_bytes(pickle.dumps({"just": "a dict"}))
    with pytest.raises(TokenizerError, match="no tiktoken Encoding inside"):
        Tokenizer.from_directory(tmp_path)
    # an image is not a pickle at all
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, "PNG")
    (tmp_path / "tokenizer.pkl").write_bytes(buf.getvalue())
    with pytest.raises(TokenizerError, match="not a nanochat tokenizer.pkl"):
        Tokenizer.from_directory(tmp_path)
