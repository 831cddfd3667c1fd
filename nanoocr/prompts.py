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


def prompt_text(name_or_text, ref=None):
    """A prompt key (or alias), or any custom text; custom text gets `<image>\\n` in front if missing."""
    key = ALIASES.get(name_or_text, name_or_text)
    if key in PROMPTS:
        if key == "locate":
            if not ref:
                raise ValueError("the 'locate' prompt needs the text to find (--ref)")
            return PROMPTS[key].format(ref=ref)
        return PROMPTS[key]
    text = name_or_text.strip()
    if not text:
        raise ValueError("empty prompt")
    return text if "<image>" in text else "<image>\n" + text
