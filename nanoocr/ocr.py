"""
`nanoocr ocr`: images, PDFs, folders and stdin in; JSON lines, markdown or plain text out.

  nanoocr ocr scan.pdf pages/ --model DIR --format md --out out/   # out/scan.md, out/scan_files/, ...
  cat page.png | nanoocr ocr - --model DIR --format jsonl          # one JSON line per page on stdout

Pages from all inputs are read --batch-size at a time (one batched generation each), so a folder of
single images batches as well as a long PDF, and at most one batch of page images is in memory.
A bad input is reported on stderr and skipped: the others are still written, and the exit code is 1.
--out is checked (opened) before the model loads. Every output file is written as a temp file next to it
and renamed into place when complete, so an input is never cut short by its own output, and a failure to
write or finish one (a full disk) is one more reported failure, not a traceback.
"""

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from nanoocr.grounding import crop_figures, draw_boxes, parse_grounded, to_markdown, to_pixels
from nanoocr.image import MODES

FORMATS = ("md", "txt", "jsonl")
MD_BREAK = "\n\n---\n\n"
TXT_BREAK = "\n\f\n"  # a form feed on its own line: pdftotext's page break


def add_args(p):
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image, PDF, folder (recursive), or - for stdin")
    p.add_argument("--model", required=True, help="model folder (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--mode", default="base", choices=MODES, help="resolution mode")
    p.add_argument("--prompt", default="markdown", help="markdown|md|ocr|free|figure|describe|locate, or any text")
    p.add_argument("--ref", default=None, help="the text to find, for --prompt locate")
    p.add_argument("--format", default="md", choices=FORMATS,
                   help="md/txt: one file per input in the --out folder; jsonl: one line per page")
    p.add_argument("--out", default=None, help="md/txt: folder (default: current); jsonl: file (default: stdout)")
    p.add_argument("--batch-size", type=int, default=4, help="pages per generation batch")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:N]")
    p.add_argument("--dpi", type=int, default=144, help="PDF render resolution")
    p.add_argument("--max-pages", type=int, default=None, help="read at most this many pages of each PDF")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="per page; generation also stops at the end")


def boxes_json(blocks, width, height):
    """Every box of every block, in pixels of a width x height page (a block may have several boxes)."""
    return [{"label": b.label, "box": [int(v) for v in to_pixels(box, width, height)]}
            for b in blocks for box in b.boxes]


# ----------------------------------------------------------------------------------------------
# where results go


def _temp_next_to(path):
    """An open temp file in `path`'s folder; renamed over `path` when done, so an input that is also the
    output is read whole before it is replaced, and a crash leaves the old file, not half a new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; outputs are ordinary files
    return os.fdopen(fd, "w", encoding="utf-8"), Path(tmp)


def _finish(f, tmp, path):
    try:
        f.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class JsonlSink:
    def __init__(self, path=None):
        self.path = Path(path) if path else None
        if path is None:
            self.f, self.tmp = sys.stdout, None
        elif self.path.exists() and not self.path.is_file():  # /dev/stdout, a FIFO: written to as it is
            self.f, self.tmp = open(self.path, "w", encoding="utf-8"), None
        else:
            self.f, self.tmp = _temp_next_to(self.path)

    def begin(self, source):
        pass  # one file for all inputs

    def add(self, page, result):
        blocks, _ = parse_grounded(result.text)
        row = {"source": page.source, "page": page.page, "text": result.text,
               "boxes": boxes_json(blocks, *page.image.size), "seconds": round(result.seconds, 4)}
        self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
        self.f.flush()  # a consumer downstream of a pipe sees each page as it is done

    def close(self):
        if self.tmp is not None:
            self.tmp, tmp = None, self.tmp
            _finish(self.f, tmp, self.path)
        elif self.f is not sys.stdout:
            self.f.close()

    def discard(self):
        """Nothing was read: leave --out as it was."""
        if self.tmp is not None:
            self.f.close()
            self.tmp.unlink()
            self.tmp = None


class FileSink:
    """One <stem>.md / <stem>.txt per input. iter_pages yields an input's pages together and in order, so
    each file is appended to as its pages come and closed (renamed into place) when the next input starts."""

    def __init__(self, out_dir, fmt):
        self.dir, self.fmt = Path(out_dir), fmt
        self.dir.mkdir(parents=True, exist_ok=True)
        f, tmp = _temp_next_to(self.dir / "probe")  # an unwritable folder fails now, before the model loads
        f.close()
        tmp.unlink()
        self.stems, self.source, self.f, self.n, self.error = set(), None, None, 0, None

    def _stem(self, source):
        # two inputs named page.png in different folders must not overwrite each other
        base = "stdin" if source in ("-", "<stdin>") else Path(str(source)).stem or "page"
        stem, i = base, 1
        while stem in self.stems:
            i += 1
            stem = f"{base}-{i}"
        self.stems.add(stem)
        return stem

    def begin(self, source):
        """Finish the previous input's file and start `source`'s. OSError if finishing fails (that file is
        lost, this one is still started); a failure to open is raised by each add for this input."""
        if source == self.source:
            return
        try:
            self.close()
        finally:
            self.source, self.stem, self.n, self.error = source, self._stem(source), 0, None
            try:
                self.f, self.tmp = _temp_next_to(self.dir / f"{self.stem}.{self.fmt}")
            except OSError as e:
                self.error = e

    def add(self, page, result):
        self.begin(page.source)
        if self.error is not None:  # every page of this input fails with the reason; the next input tries again
            raise OSError(f"cannot open an output file in {self.dir}: {self.error}")
        if self.fmt == "md":
            text = f"<!-- page {page.page} -->\n\n" + self.markdown(page, result)
        else:
            text = parse_grounded(result.text)[1]
        self.f.write(((MD_BREAK if self.fmt == "md" else TXT_BREAK) if self.n else "") + text.strip())
        self.f.flush()
        self.n += 1

    def markdown(self, page, result):
        """Clean markdown for one page; figures are cropped next to it and the boxes drawn on a copy."""
        blocks, plain = parse_grounded(result.text)
        if not blocks:
            return to_markdown(blocks, plain)
        files = self.dir / f"{self.stem}_files"
        name = f"{self.stem}_p{page.page}"
        figures = crop_figures(page.image, blocks, files, name)
        files.mkdir(parents=True, exist_ok=True)
        draw_boxes(page.image, blocks).save(files / f"{name}_boxes.png")
        # links relative to the .md file, so the output folder can be moved as a whole
        return to_markdown(blocks, plain, [Path(p).relative_to(self.dir).as_posix() for p in figures])

    def close(self):
        if self.f is not None:
            f, self.f = self.f, None
            try:
                f.write("\n")
            finally:
                _finish(f, self.tmp, self.dir / f"{self.stem}.{self.fmt}")

    def discard(self):
        pass  # nothing is open before the first page


# ----------------------------------------------------------------------------------------------


def fail(message):
    tqdm.write(f"error: {message}", file=sys.stderr)


def close(sink):
    """Close `sink`; a failure (a full disk) is reported and counted, not raised. Returns the failures."""
    try:
        sink.close()
        return 0
    except OSError as e:
        fail(f"writing the output: {e}")
        return 1


def run(reader, sink, pages, args):
    """Read every Page of `pages` (Failures are reported and counted); returns (pages, failed, tokens)."""
    from nanoocr.inputs import Failure
    done = failed = tokens = 0
    batch = []
    bar = tqdm(unit="page", desc="ocr", file=sys.stderr, disable=None, dynamic_ncols=True)

    def flush():
        nonlocal done, failed, tokens
        try:
            results = reader.read([p.image for p in batch], prompt=args.prompt, ref=args.ref)
        except Exception as e:  # e.g. out of memory: these pages fail, the next batch may still fit
            for p in batch:
                fail(f"{p.source} page {p.page}: {type(e).__name__}: {e}")
            failed += len(batch)
            results = []
        for p, r in zip(batch, results):
            try:
                sink.begin(p.source)
            except OSError as e:  # the previous input's file could not be finished: one more failure
                fail(f"writing the output: {e}")
                failed += 1
            try:
                sink.add(p, r)
            except (OSError, ValueError) as e:  # a full disk, an odd box: this page fails, not the run
                fail(f"{p.source} page {p.page}: writing the result: {e}")
                failed += 1
                continue
            done, tokens = done + 1, tokens + r.tokens
        bar.update(len(batch))
        batch.clear()

    for item in pages:
        if isinstance(item, Failure):
            fail(f"{item.source}: {item.error}")
            failed += 1
            continue
        batch.append(item)
        if len(batch) >= args.batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    return done, failed, tokens


def main(args):
    from nanoocr.inputs import iter_pages
    from nanoocr.prompts import prompt_text
    from nanoocr.reader import Reader

    def usage_error(message):
        print(f"nanoocr ocr: {message}", file=sys.stderr)
        return 2

    try:
        prompt_text(args.prompt, args.ref)  # a bad prompt fails here, not once per batch
    except ValueError as e:
        return usage_error(str(e))
    for flag, value in (("--batch-size", args.batch_size), ("--max-new-tokens", args.max_new_tokens),
                        ("--dpi", args.dpi), ("--max-pages", args.max_pages)):
        if value is not None and value < 1:  # 0 would read nothing and still report success
            return usage_error(f"{flag} must be at least 1, got {value}")
    if args.format == "jsonl" and args.out and Path(args.out).is_dir():
        return usage_error(f"--out {args.out} is a folder; --format jsonl writes one file")
    if args.format == "jsonl" and args.out and any(_same_file(args.out, i) for i in args.inputs):
        return usage_error(f"--out {args.out} is one of the inputs; writing there would replace it")
    # the output is opened before the model loads: a bad --out costs a second, not a model load
    try:
        sink = JsonlSink(args.out) if args.format == "jsonl" else FileSink(args.out or ".", args.format)
    except OSError as e:
        return usage_error(f"cannot write --out {args.out or '.'}: {e}")
    try:
        reader = Reader.from_dir(args.model, device=args.device, mode=args.mode, max_new_tokens=args.max_new_tokens)
    except (OSError, ValueError, RuntimeError) as e:  # missing folder/files, corrupt checkpoint, no CUDA
        sink.discard()
        return usage_error(f"cannot load the model: {e}")

    stdin = sys.stdin.buffer if "-" in args.inputs else None
    t0 = time.time()
    try:
        pages = iter_pages(args.inputs, dpi=args.dpi, max_pages=args.max_pages, stdin=stdin)
        done, failed, tokens = run(reader, sink, pages, args)
    finally:
        failed_close = close(sink)
    failed += failed_close
    dt = max(time.time() - t0, 1e-9)
    print(f"pages {done} (failed {failed}), tokens {tokens}, {done / dt:.2f} pages/s, {tokens / dt:.1f} tokens/s",
          file=sys.stderr)
    return 1 if failed else 0


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (yet)
        return False
