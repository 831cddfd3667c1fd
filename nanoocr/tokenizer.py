"""
The BPE tokenizer: nanochat's (GPT-4-style split pattern, trained with rustbpe, encoded with tiktoken)
plus our special tokens: `<|image|>` (one per vision token) and DeepSeek-OCR's grounding markers.

  ids     [0, n_merges)           byte-level BPE ranks
          then nanochat's 9       <|bos|>, <|user_start|>, ... (so a nanochat tokenizer keeps its ids)
          then our 6              <|image|>, <|grounding|>, <|ref|>, <|/ref|>, <|det|>, <|/det|>
  files   tokenizer.json          ours: ranks + pattern + special ids, no pickle
          tokenizer.pkl           nanochat's pickled tiktoken Encoding, read by a restricted unpickler
                                  that builds no object but a plain dict (no code from the file runs)

In text, only the grounding markers become special tokens: `<|image|>`, `<|bos|>` and the chat
markers written by a user or found in a document are ordinary text, so data cannot forge them.
"""

import base64
import json
import pickle
from pathlib import Path

import tiktoken

from nanoocr.fileio import atomic_write_json

FORMAT = "nanoocr-tokenizer-v1"
NANOCHAT_SPECIAL = ["<|bos|>", "<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>",
                    "<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>"]
IMAGE = "<|image|>"
GROUNDING = ["<|grounding|>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>"]
SPECIAL_TOKENS = NANOCHAT_SPECIAL + [IMAGE] + GROUNDING
# nanochat's pattern: GPT-4's, but numbers split in runs of at most 2 digits
SPLIT_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
                 r"""\s*[\r\n]|\s+(?!\S)|\s+""")
IMAGE_PLACEHOLDER = "<image>"  # in a user message: where an image's vision tokens go


class TokenizerError(ValueError):
    """An unreadable or unsafe tokenizer file; the message names the file."""


# ----------------------------------------------------------------------------------------------
# nanochat's tokenizer.pkl without unpickling arbitrary objects


class _EncodingState:
    """Stands in for tiktoken.core.Encoding while unpickling: it only keeps the state dict."""

    def __setstate__(self, state):
        self.state = state


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("tiktoken.core", "Encoding"):
            return _EncodingState
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a tokenizer.pkl holds only a tiktoken "
                                     f"Encoding")


def _read_pickle(path):
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(f).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as e:
        raise TokenizerError(f"{path}: not a nanochat tokenizer.pkl: {e}") from None
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise TokenizerError(f"{path}: not a nanochat tokenizer.pkl (no tiktoken Encoding inside)")
    ranks, special, pattern = state.get("mergeable_ranks"), state.get("special_tokens"), state.get("pat_str")
    if not (isinstance(ranks, dict) and all(isinstance(k, bytes) and type(v) is int for k, v in ranks.items())):
        raise TokenizerError(f"{path}: mergeable_ranks must map bytes to int")
    if not (isinstance(special, dict) and all(isinstance(k, str) and type(v) is int for k, v in special.items())):
        raise TokenizerError(f"{path}: special_tokens must map str to int")
    if not isinstance(pattern, str):
        raise TokenizerError(f"{path}: pat_str must be a string")
    return ranks, special, pattern


# ----------------------------------------------------------------------------------------------


def _with_our_specials(ranks, special):
    """Add the special tokens `special` lacks after the highest id in use; existing ids never move."""
    special = dict(special)
    nxt = max([len(ranks) - 1, *special.values()]) + 1
    for tok in SPECIAL_TOKENS:
        if tok not in special:
            special[tok] = nxt
            nxt += 1
    return special


class Tokenizer:
    def __init__(self, ranks, special, pattern=SPLIT_PATTERN):
        missing = [t for t in SPECIAL_TOKENS if t not in special]
        if missing:
            raise ValueError(f"tokenizer lacks special tokens {missing}")
        self.enc = tiktoken.Encoding("nanoocr", pat_str=pattern, mergeable_ranks=ranks, special_tokens=special)
        self.ranks, self.special, self.pattern = ranks, special, pattern
        self.vocab_size = max([len(ranks) - 1, *special.values()]) + 1
        self.bos_id = special["<|bos|>"]
        self.image_id = special[IMAGE]
        self._text_special = set(GROUNDING)

    # --------------------------------------------------------------------------- build / save / load

    @classmethod
    def train(cls, texts, vocab_size):
        """BPE with rustbpe on an iterator of strings; vocab_size counts the special tokens too."""
        import rustbpe
        n_merged = vocab_size - len(SPECIAL_TOKENS)
        if n_merged < 256:
            raise ValueError(f"vocab_size {vocab_size} leaves no room for the 256 byte tokens and "
                             f"{len(SPECIAL_TOKENS)} special tokens (need >= {256 + len(SPECIAL_TOKENS)})")
        bpe = rustbpe.Tokenizer()
        bpe.train_from_iterator(iter(texts), n_merged, pattern=SPLIT_PATTERN)
        ranks = {bytes(k): v for k, v in bpe.get_mergeable_ranks()}
        special = {t: len(ranks) + i for i, t in enumerate(SPECIAL_TOKENS)}
        return cls(ranks, special)

    def save(self, directory):
        by_rank = sorted(self.ranks.items(), key=lambda kv: kv[1])
        doc = {"format": FORMAT, "pattern": self.pattern,
               "ranks": [base64.b64encode(b).decode("ascii") for b, _ in by_rank],
               "special_tokens": self.special}
        if [r for _, r in by_rank] != list(range(len(by_rank))):
            doc["rank_ids"] = [r for _, r in by_rank]  # only for foreign tokenizers with gaps in their ranks
        atomic_write_json(Path(directory) / "tokenizer.json", doc)

    @classmethod
    def from_directory(cls, directory):
        """Our tokenizer.json, or nanochat's tokenizer.pkl (our special tokens are added after its own)."""
        d = Path(directory)
        if (d / "tokenizer.json").is_file():
            return cls._from_json(d / "tokenizer.json")
        if (d / "tokenizer.pkl").is_file():
            ranks, special, pattern = _read_pickle(d / "tokenizer.pkl")
            return cls(ranks, _with_our_specials(ranks, special), pattern)
        raise FileNotFoundError(f"{d}: no tokenizer.json (ours) or tokenizer.pkl (nanochat) in this folder")

    @classmethod
    def _from_json(cls, path):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != FORMAT:
                raise ValueError(f"format is {doc.get('format')!r}, expected {FORMAT!r}")
            tokens = [base64.b64decode(s, validate=True) for s in doc["ranks"]]
            ids = doc.get("rank_ids", range(len(tokens)))
            ranks = dict(zip(tokens, ids, strict=True))
            special = {str(k): int(v) for k, v in doc["special_tokens"].items()}
            return cls(ranks, special, doc["pattern"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSONDecodeError is a ValueError
            raise TokenizerError(f"{path}: corrupt tokenizer: {e}") from None

    # --------------------------------------------------------------------------- text

    def special_id(self, token):
        return self.special[token]

    def encode(self, text):
        """Text -> ids; grounding markers become their special tokens, every other special is plain text."""
        return self.enc.encode(text, allowed_special=self._text_special, disallowed_special=())

    def decode(self, ids):
        return self.enc.decode(ids)

    # --------------------------------------------------------------------------- conversations

    def _content(self, text, counts, where):
        """A user message: text with each <image> expanded to its run of <|image|> ids."""
        pieces = text.split(IMAGE_PLACEHOLDER)
        ids = self.encode(pieces[0])
        for piece in pieces[1:]:
            if not counts:
                raise ValueError(f"{where}: more <image> placeholders than images")
            ids += [self.image_id] * counts.pop(0) + self.encode(piece)
        return ids

    def render_conversation(self, messages, image_counts=()):
        """nanochat's chat format -> (ids, mask): mask 1 on assistant content and <|assistant_end|>, the only
        tokens trained on. image_counts: vision tokens per image, in the order of the <image> placeholders."""
        msgs = list(messages)
        if msgs and msgs[0].get("role") == "system":  # nanochat folds a system prompt into the first user turn
            if len(msgs) < 2 or msgs[1].get("role") != "user":
                raise ValueError("a system message must be followed by a user message")
            msgs = [{"role": "user", "content": msgs[0]["content"] + "\n\n" + msgs[1]["content"]}] + msgs[2:]
        if not msgs:
            raise ValueError("empty conversation")
        counts = list(image_counts)
        sp = self.special
        ids, mask = [self.bos_id], [0]
        for i, m in enumerate(msgs):
            role, content = m.get("role"), m.get("content")
            want = "user" if i % 2 == 0 else "assistant"
            if role != want:
                raise ValueError(f"message {i}: role {role!r}, expected {want!r} (turns alternate, user first)")
            if not isinstance(content, str):
                raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
            if role == "user":
                part = [sp["<|user_start|>"]] + self._content(content, counts, f"message {i}") + [sp["<|user_end|>"]]
                ids += part
                mask += [0] * len(part)
            else:
                body = self.encode(content) + [sp["<|assistant_end|>"]]
                ids += [sp["<|assistant_start|>"]] + body
                mask += [0] + [1] * len(body)
        if counts:
            raise ValueError(f"{len(image_counts)} images but only {len(image_counts) - len(counts)} <image> "
                             f"placeholders")
        return ids, mask

    def render_for_completion(self, messages, image_counts=()):
        """The prompt for generation: the conversation up to its last user turn, then <|assistant_start|>."""
        msgs = list(messages)
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        ids, _ = self.render_conversation(msgs, image_counts)
        return ids + [self.special["<|assistant_start|>"]]
