"""nano-deepseek-ocr: a DeepSeek-OCR-style vision-language OCR model on a nanochat GPT."""

__version__ = "0.1.0"
