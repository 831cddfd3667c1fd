"""
Prompts by name (DeepSeek-OCR's wording). `<image>` marks where an image's vision tokens go.
Training data names its prompt with one of these keys, so the model sees the same text at inference.
"""

PROMPTS = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",  # grounded: boxes + markdown
    "md": "<image>\nConvert the document to markdown.",  # markdown without boxes
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
    "locate": "<image>\nLocate <|ref|>{ref}<|/ref|> in the image.",
}
# names used by the synthetic generator -> prompt keys
ALIASES = {"layout": "markdown", "plain": "free", "text": "free"}
MAX_PROMPT_CHARS = 4000  # a prompt is an instruction, not a document; far longer ones only fill the context


def prompt_text(name_or_text, ref=None):
    """A prompt key (or alias), or any custom text; custom text gets `<image>\\n` in front if missing."""
    key = ALIASES.get(name_or_text, name_or_text)
    if key in PROMPTS:
        if key == "locate":
            if not ref:
                raise ValueError("the 'locate' prompt needs the text to find (--ref)")
            return _checked(PROMPTS[key].format(ref=ref))
        return PROMPTS[key]
    text = name_or_text.strip()
    if not text:
        raise ValueError("empty prompt")
    return _checked(text if "<image>" in text else "<image>\n" + text)


def _checked(text):
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt of {len(text):,} characters; the limit is {MAX_PROMPT_CHARS:,}")
    if text.count("<image>") != 1:  # one page per prompt: a second placeholder has no image to fill it
        raise ValueError(f"a prompt holds one <image> (where the page goes); this one has {text.count('<image>')}")
    return text
