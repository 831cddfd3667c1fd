"""
`nanoocr serve`: one loaded model behind a web page and a JSON API.

  GET  /          the page: drop an image or a PDF, see the markdown, the raw text and the boxes
  GET  /healthz   {"status": "ok", "model", "device", "mode", "queued"}
  POST /api/ocr   multipart: file (image or PDF) + prompt, mode, ref, max_new_tokens -> {"pages": [...]}
  GET  /docs      OpenAPI

Generation runs on one worker thread, so requests queue for the model in arrival order, the model never
runs twice at once, and the event loop stays free to take uploads and answer /healthz meanwhile.
Each request has a deadline (--timeout) covering its wait in the queue and its generation; generation
past it is stopped at the next token and the request answers 504.

Status codes: 400 unreadable file (the reason is in "detail"), 413 upload over --max-upload-mb,
422 bad parameter (unknown mode, locate without ref, ...), 504 deadline passed. A PDF longer than
--max-pages is not an error: its first pages are read and "warning" says so.
"""

import asyncio
import base64
import io
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from nanoocr.grounding import crop_figures, draw_boxes, parse_grounded, to_markdown
from nanoocr.image import MODES
from nanoocr.ocr import boxes_json

MB = 1 << 20
FORM_SLACK = 64 * 1024  # multipart boundaries and the small text fields around the file
PAGE = Path(__file__).with_name("index.html")


class Box(BaseModel):
    label: str
    box: list[int]  # x1, y1, x2, y2 in pixels of the page image


class PageResult(BaseModel):
    page: int
    text: str  # the model's raw output
    markdown: str  # clean markdown (grounding tokens removed)
    boxes: list[Box]
    width: int
    height: int
    overlay_png_base64: str  # the page with its boxes drawn (the page itself when it has none)
    tokens: int
    seconds: float


class OCRResponse(BaseModel):
    pages: list[PageResult]
    warning: str | None = None


class UploadLimit:
    """ASGI middleware: a body whose Content-Length is over the limit is refused before it is read; one
    that lies or sends no length is stopped as soon as the bytes read pass the limit. Both are 413."""

    def __init__(self, app, limit):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self.too_large()(scope, receive, send)
        seen = 0

        async def capped_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # FastAPI re-raises an HTTPException from body parsing, so this becomes the response
                raise HTTPException(413, self.message())
            return message

        await self.app(scope, capped_receive, send)

    def message(self):
        return f"upload too large: the limit is {(self.limit - FORM_SLACK) / MB:g} MB"

    def too_large(self):
        # the client may still be sending; close the connection rather than read what we refuse
        return JSONResponse({"detail": self.message()}, status_code=413, headers={"Connection": "close"})


# the form fields of POST /api/ocr, described for /docs
FileField = Annotated[UploadFile, File(description="an image (PNG, JPEG, WebP, TIFF, ...) or a PDF")]
PromptField = Annotated[str, Form(description="markdown, md, ocr, free, figure, describe, locate, or any text")]
ModeField = Annotated[str | None, Form(description=f"{', '.join(MODES)}; default: the server's --mode")]
RefField = Annotated[str | None, Form(description="the text to find, for prompt=locate")]
TokensField = Annotated[int | None, Form(ge=1, description="per page; default and cap: the server's")]


class Deadline(Exception):
    pass


def load_upload(data, name, dpi, max_pages):
    """Upload bytes -> (page images, warning or None). InputError on anything unreadable."""
    from nanoocr.inputs import InputError, load_image, pdf_page_count, pdf_pages
    if not data:
        raise InputError(f"{name}: empty file")
    if b"%PDF-" in data[:1024]:  # readers accept a PDF header anywhere in the first KB
        n = pdf_page_count(data, name=name)
        warning = None
        if n > max_pages:
            warning = f"{name} has {n} pages; only the first {max_pages} were read"
        return [p.image for p in pdf_pages(data, name=name, dpi=dpi, max_pages=max_pages)], warning
    return [load_image(data, name=name)], None


def png_base64(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_uris(image, blocks):
    """Figure crops as data: URIs, so the page's markdown shows them without files on the server."""
    with tempfile.TemporaryDirectory() as d:
        paths = crop_figures(image, blocks, d, "figure")
        return ["data:image/png;base64," + base64.b64encode(Path(p).read_bytes()).decode("ascii") for p in paths]


def page_result(n, image, result):
    blocks, plain = parse_grounded(result.text)
    overlay = draw_boxes(image, blocks) if blocks else image
    markdown = to_markdown(blocks, plain, figure_uris(image, blocks) if blocks else None)
    return PageResult(page=n, text=result.text, markdown=markdown,
                      boxes=boxes_json(blocks, image.width, image.height), width=image.width,
                      height=image.height, overlay_png_base64=png_base64(overlay), tokens=result.tokens,
                      seconds=round(result.seconds, 4))


def create_app(reader, max_upload_mb=20, max_pages=20, timeout_s=120, batch_size=4, dpi=144, model_name=None):
    """The app over `reader`. Its model is only ever used from the one worker thread made here."""
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanoocr-model")
    queued = 0
    queued_lock = threading.Lock()
    limit = int(max_upload_mb * MB)

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="nano-deepseek-ocr", summary="DeepSeek-OCR-style reading of images and PDFs",
                  description=__doc__, lifespan=lifespan)
    app.add_middleware(UploadLimit, limit=limit + FORM_SLACK)
    index = PAGE.read_text(encoding="utf-8")

    def generate(images, prompt, ref, mode, max_new_tokens, deadline):
        """Runs on the worker thread: all pages of one request, batch_size at a time."""
        nonlocal queued
        with queued_lock:
            queued -= 1

        def check(*_):  # the engine calls this with each new token: a raise stops generation there
            if time.monotonic() > deadline:
                raise Deadline
        check()  # the request may have waited out its time in the queue
        results = []
        for i in range(0, len(images), batch_size):
            results += reader.read(images[i:i + batch_size], prompt=prompt, ref=ref, mode=mode,
                                   max_new_tokens=max_new_tokens, stream=check)
        return results

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home():
        return index

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": model_name or "nanoocr", "device": str(reader.device),
                "mode": reader.mode, "queued": queued}

    @app.post("/api/ocr", response_model=OCRResponse)
    async def ocr(file: FileField, prompt: PromptField = "markdown", mode: ModeField = None, ref: RefField = None,
                  max_new_tokens: TokensField = None):
        from nanoocr.inputs import InputError
        from nanoocr.prompts import prompt_text
        nonlocal queued
        deadline = time.monotonic() + timeout_s
        mode, prompt, ref = mode or None, prompt or "markdown", ref or None  # a browser sends empty fields
        if mode is not None and mode not in MODES:
            raise HTTPException(422, f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if max_new_tokens is not None and max_new_tokens > reader.max_new_tokens:
            raise HTTPException(422, f"max_new_tokens {max_new_tokens} is over this server's cap of "
                                     f"{reader.max_new_tokens}")
        try:
            prompt_text(prompt, ref)
        except ValueError as e:
            raise HTTPException(422, str(e)) from None
        data = await file.read(limit + 1)  # the body cap allows a little slack for the form around the file
        if len(data) > limit:
            raise HTTPException(413, f"upload too large: the limit is {max_upload_mb:g} MB")
        name = file.filename or "upload"
        try:
            images, warning = await run_in_threadpool(load_upload, data, name, dpi, max_pages)
        except InputError as e:
            raise HTTPException(400, str(e)) from None
        with queued_lock:
            queued += 1
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(worker, generate, images, prompt, ref, mode, max_new_tokens,
                                                 deadline)
        except Deadline:
            raise HTTPException(504, f"no answer within the server's {timeout_s:g} s timeout") from None
        except Exception as e:  # e.g. out of memory: say what went wrong rather than a bare 500
            raise HTTPException(500, f"generation failed: {type(e).__name__}: {e}") from None
        # overlays and PNG encoding are CPU work for any thread but the model's
        pages = await run_in_threadpool(lambda: [page_result(i + 1, im, r)
                                                 for i, (im, r) in enumerate(zip(images, results))])
        return OCRResponse(pages=pages, warning=warning)

    return app


# ----------------------------------------------------------------------------------------------
# nanoocr serve


def add_args(p):
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--mode", default="base", choices=MODES, help="default resolution mode (a request may pick)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda[:N]")
    p.add_argument("--max-upload-mb", type=float, default=20)
    p.add_argument("--max-pages", type=int, default=20, help="a longer PDF: its first pages, with a warning")
    p.add_argument("--timeout", type=float, default=120, help="seconds per request, queueing included (504)")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="per page: default and cap for requests")
    p.add_argument("--batch-size", type=int, default=4, help="pages of one PDF per generation batch")


def main(args):
    import sys

    import uvicorn

    from nanoocr.reader import Reader
    try:
        reader = Reader.from_dir(args.model, device=args.device, mode=args.mode, max_new_tokens=args.max_new_tokens)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"nanoocr serve: cannot load the model: {e}", file=sys.stderr)
        return 2
    app = create_app(reader, max_upload_mb=args.max_upload_mb, max_pages=args.max_pages, timeout_s=args.timeout,
                     batch_size=args.batch_size, model_name=Path(args.model).name)
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
