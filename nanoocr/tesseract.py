"""
Tesseract as a yardstick: `nanoocr eval --compare tesseract` reads the same samples with the `tesseract`
binary (Debian: apt-get install tesseract-ocr) and scores it with the same metrics, beside our model.
Pages go to the binary as PNG on stdin; nothing is written to disk and nothing reaches the network.
"""

import io
import shutil
import subprocess
import time

from nanoocr.reader import Result

# page segmentation: a single text line for line samples, a uniform block of text otherwise
PSM = {"line": "7"}
TIMEOUT_S = 60


class TesseractMissing(RuntimeError):
    pass


class TesseractReader:
    """The tesseract command line, one page at a time, answering with our Reader's Result."""

    def __init__(self, binary="tesseract", lang="eng"):
        self.binary = shutil.which(binary)
        if self.binary is None:
            raise TesseractMissing(f"--compare tesseract: no {binary!r} on PATH "
                                   "(Debian/Ubuntu: apt-get install tesseract-ocr); our scores are still printed")
        self.lang = lang
        self.version = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                      timeout=TIMEOUT_S).stdout.split("\n")[0].strip()

    def read_one(self, image, kind=None):
        """kind (a sample's kind) picks the page segmentation mode."""
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        t0 = time.time()
        cmd = [self.binary, "stdin", "stdout", "-l", self.lang, "--psm", PSM.get(kind, "6")]
        p = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=TIMEOUT_S)
        if p.returncode:
            raise RuntimeError(f"tesseract failed (exit {p.returncode}): {p.stderr.decode(errors='replace')[-300:]}")
        text = p.stdout.decode("utf-8", errors="replace").replace("\f", "").strip()
        return Result(text, len(text), time.time() - t0)
