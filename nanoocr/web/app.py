"""
`nanoocr serve`: one loaded model behind a web page and a JSON API.

  GET  /          the page: drop an image or a PDF, see the markdown, the raw text and the boxes
  GET  /healthz   {"status": "ok", "model", "device", "mode", "queued"}
  POST /api/ocr   multipart: file (image or PDF) + prompt, mode, ref, max_new_tokens -> {"pages": [...]}
  GET  /docs      OpenAPI (Swagger UI, whose scripts come from cdn.jsdelivr.net: offline, read /openapi.json)

Generation runs on one worker thread, so requests queue for the model in arrival order, the model never
runs twice at once, and the event loop stays free to take uploads and answer /healthz meanwhile.
Each request has a deadline (--timeout) covering its wait in the queue and its generation; generation
past it is stopped at the next token and the request answers 504.

Status codes: 400 unreadable file (the reason is in "detail"), 403 a cross-origin POST, 413 upload over
--max-upload-mb or pages over --max-pixels, 421 a foreign Host header on a localhost server, 422 bad
parameter (unknown mode, locate without ref, a prompt that does not fit, ...), 504 deadline passed. A PDF
longer than --max-pages is not an error: its first pages are read and "warning" says so.

Memory: a request's pages are counted in pixels before any is rendered (--max-pixels in all), and they are
rendered batch_size at a time, so a tiny PDF of huge pages is refused rather than held in memory at once.
Any web page the user visits can POST to localhost: the browser marks such a request with its Origin,
which must be this server's; a DNS-rebinding page comes with its own Host name, refused while bound to
localhost.
"""

import asyncio
import base64
import io
import ipaddress
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from nanoocr.grounding import crop_figures, draw_boxes, parse_grounded, to_markdown
from nanoocr.image import MODES
from nanoocr.ocr import boxes_json

MB = 1 << 20
MP = 1_000_000
DOCS_NOTE = ('<p style="font-family:sans-serif;margin:1em">This page loads Swagger UI from cdn.jsdelivr.net; '
             'without internet access it stays blank: the API description is <a href="/openapi.json">'
             '/openapi.json</a>.</p>')
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


def _host_of(netloc):
    """'example.com:8000' -> 'example.com', '[::1]:8000' -> '::1'; None when unparsable."""
    try:
        return urlsplit("//" + netloc).hostname
    except ValueError:
        return None


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SameOrigin:
    """ASGI middleware against other web sites. A POST whose Origin is not this server's own (Host) is 403:
    any page the user visits may POST here, and the browser says which page it was. When `local_only` (the
    server is bound to localhost), a Host that is no loopback name is 421: a DNS-rebinding page reaches
    127.0.0.1 under its own name, and then its requests are "same origin"."""

    def __init__(self, app, local_only=False):
        self.app, self.local_only = app, local_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        if self.local_only and not is_loopback(_host_of(host) or ""):
            return await self.refuse(421, f"Host {host!r} is not this localhost server")(scope, receive, send)
        origin = headers.get(b"origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            netloc = urlsplit(origin.decode("latin-1")).netloc
            if not netloc or netloc.lower() != host.lower():
                return await self.refuse(403, f"cross-origin request from {origin.decode('latin-1')!r} "
                                              f"refused")(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def refuse(status, detail):
        return JSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})


# the form fields of POST /api/ocr, described for /docs
FileField = Annotated[UploadFile, File(description="an image (PNG, JPEG, WebP, TIFF, ...) or a PDF")]
PromptField = Annotated[str, Form(description="markdown, md, ocr, free, figure, describe, locate, or any text")]
ModeField = Annotated[str | None, Form(description=f"{', '.join(MODES)}; default: the server's --mode")]
RefField = Annotated[str | None, Form(description="the text to find, for prompt=locate")]
TokensField = Annotated[int | None, Form(ge=1, description="per page; default and cap: the server's")]


class Deadline(Exception):
    pass


def open_upload(data, name, dpi, max_pages, max_pixels):
    """Upload bytes -> (page count, an iterator of page images rendered as it is advanced, warning or None).
    InputError on anything unreadable; TooManyPixels when the pages come to more than `max_pixels`,
    counted from the page sizes before any is rendered."""
    from nanoocr.inputs import InputError, load_image, pdf_page_count, pdf_page_pixels, pdf_pages
    if not data:
        raise InputError(f"{name}: empty file")
    if b"%PDF-" in data[:1024]:  # readers accept a PDF header anywhere in the first KB
        n = pdf_page_count(data, name=name)
        warning = None
        if n > max_pages:
            warning = f"{name} has {n} pages; only the first {max_pages} were read"
        pixels = sum(pdf_page_pixels(data, name=name, dpi=dpi, max_pages=max_pages))
        if pixels > max_pixels:
            raise TooManyPixels(f"{name}: its pages come to {pixels / MP:,.0f} MP at {dpi} dpi; this server "
                                f"reads at most {max_pixels / MP:g} MP per request")
        return min(n, max_pages), (p.image for p in pdf_pages(data, name=name, dpi=dpi, max_pages=max_pages)), \
            warning
    image = load_image(data, name=name)
    if image.width * image.height > max_pixels:
        raise TooManyPixels(f"{name}: {image.width * image.height / MP:,.1f} MP; this server reads at most "
                            f"{max_pixels / MP:g} MP per request")
    return 1, iter([image]), None


class TooManyPixels(Exception):
    pass


def _take(it, n):
    """The next `n` items of an iterator (fewer at its end): here, the next batch of pages rendered."""
    out = []
    for x in it:
        out.append(x)
        if len(out) == n:
            break
    return out


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


class ModelWorker:
    """The one thread that uses the model, and the count of batches waiting for it (for /healthz)."""

    def __init__(self, reader, timeout_s):
        self.reader, self.timeout_s = reader, timeout_s
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nanoocr-model")
        self.queued, self.lock = 0, threading.Lock()

    def _generate(self, images, prompt, ref, mode, max_new_tokens, deadline):
        """Runs on the worker thread: one batch of a request's pages."""
        with self.lock:
            self.queued -= 1
        late = lambda: time.monotonic() > deadline
        if late():  # the request may have waited out its time in the queue
            raise Deadline
        results = self.reader.read(images, prompt=prompt, ref=ref, mode=mode, max_new_tokens=max_new_tokens,
                                   stop=late)
        if late():  # the reading stopped at the deadline (or ran past it)
            raise Deadline
        return results

    async def read(self, images, prompt, ref, mode, max_new_tokens, deadline):
        """Results for one batch of pages, read on the worker thread; failures as HTTP errors."""
        with self.lock:
            self.queued += 1
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, self._generate, images, prompt, ref, mode,
                                              max_new_tokens, deadline)
        except Deadline:
            raise HTTPException(504, f"no answer within the server's {self.timeout_s:g} s timeout") from None
        except ValueError as e:  # the request does not fit the model (prompt + pages over its context)
            raise HTTPException(422, f"cannot read this request: {e}") from None
        except Exception as e:  # e.g. out of memory: say what went wrong rather than a bare 500
            raise HTTPException(500, f"generation failed: {type(e).__name__}: {e}") from None


def check_form(reader, prompt, mode, ref, max_new_tokens):
    """The form's fields, empty ones as not given (a browser sends them); HTTP 422 naming a bad one."""
    from nanoocr.prompts import prompt_text
    mode, prompt, ref = mode or None, prompt or "markdown", ref or None
    if mode is not None and mode not in MODES:
        raise HTTPException(422, f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if max_new_tokens is not None and max_new_tokens > reader.max_new_tokens:
        raise HTTPException(422, f"max_new_tokens {max_new_tokens} is over this server's cap of "
                                 f"{reader.max_new_tokens}")
    try:
        prompt_text(prompt, ref)
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    return prompt, mode, ref


async def read_upload(file, limit, max_upload_mb, dpi, max_pages, max_pixels):
    """The uploaded file -> (page count, page iterator, warning); HTTP 413 or 400 when it cannot be read."""
    from nanoocr.inputs import InputError
    data = await file.read(limit + 1)  # the body cap allows a little slack for the form around the file
    if len(data) > limit:
        raise HTTPException(413, f"upload too large: the limit is {max_upload_mb:g} MB")
    try:
        return await run_in_threadpool(open_upload, data, file.filename or "upload", dpi, max_pages, max_pixels)
    except InputError as e:
        raise HTTPException(400, str(e)) from None
    except TooManyPixels as e:
        raise HTTPException(413, str(e)) from None


def create_app(reader, max_upload_mb=20, max_pages=20, timeout_s=120, batch_size=4, dpi=144, model_name=None,
               max_pixels=100 * MP, local_only=False):
    """The app over `reader`. Its model is only ever used from the one worker thread made here.
    local_only: refuse Host headers that are no loopback name (set when the server is bound to localhost)."""
    worker = ModelWorker(reader, timeout_s)
    limit = int(max_upload_mb * MB)

    @asynccontextmanager
    async def lifespan(app):
        yield
        worker.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="nano-deepseek-ocr", summary="DeepSeek-OCR-style reading of images and PDFs",
                  description=__doc__, lifespan=lifespan, docs_url=None)
    app.add_middleware(UploadLimit, limit=limit + FORM_SLACK)
    app.add_middleware(SameOrigin, local_only=local_only)  # added last: runs first
    index = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home():
        return index

    @app.get("/docs", include_in_schema=False)
    def docs():
        page = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - API")
        return HTMLResponse(page.body.decode().replace("<body>", "<body>" + DOCS_NOTE, 1))

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "model": model_name or "nanoocr", "device": str(reader.device),
                "mode": reader.mode, "queued": worker.queued}

    @app.post("/api/ocr", response_model=OCRResponse)
    async def ocr(file: FileField, prompt: PromptField = "markdown", mode: ModeField = None, ref: RefField = None,
                  max_new_tokens: TokensField = None):
        from nanoocr.inputs import InputError
        deadline = time.monotonic() + timeout_s
        prompt, mode, ref = check_form(reader, prompt, mode, ref, max_new_tokens)
        n, pages, warning = await read_upload(file, limit, max_upload_mb, dpi, max_pages, max_pixels)
        results = []
        try:
            # batch_size pages at a time: rendered, read, turned into results, then let go
            while len(results) < n:
                try:
                    images = await run_in_threadpool(_take, pages, batch_size)
                except InputError as e:
                    raise HTTPException(400, str(e)) from None
                if not images:
                    break
                read = await worker.read(images, prompt, ref, mode, max_new_tokens, deadline)
                # overlays and PNG encoding are CPU work for any thread but the model's
                first = len(results) + 1
                results += await run_in_threadpool(lambda ims=images, rs=read, k=first: [
                    page_result(k + i, im, r) for i, (im, r) in enumerate(zip(ims, rs))])
        finally:
            close = getattr(pages, "close", None)  # a PDF's generator: closing it closes the document
            if close is not None:
                await run_in_threadpool(close)
        return OCRResponse(pages=results, warning=warning)

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
    p.add_argument("--max-pixels", type=float, default=100, help="megapixels of page images per request (413)")


def main(args):
    import sys

    import uvicorn

    from nanoocr.reader import Reader
    for flag, value in (("--max-pages", args.max_pages), ("--max-new-tokens", args.max_new_tokens),
                        ("--batch-size", args.batch_size), ("--max-pixels", args.max_pixels),
                        ("--max-upload-mb", args.max_upload_mb), ("--timeout", args.timeout)):
        if not value > 0:
            print(f"nanoocr serve: {flag} must be positive, got {value}", file=sys.stderr)
            return 2
    try:
        reader = Reader.from_dir(args.model, device=args.device, mode=args.mode, max_new_tokens=args.max_new_tokens)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"nanoocr serve: cannot load the model: {e}", file=sys.stderr)
        return 2
    app = create_app(reader, max_upload_mb=args.max_upload_mb, max_pages=args.max_pages, timeout_s=args.timeout,
                     batch_size=args.batch_size, model_name=Path(args.model).name,
                     max_pixels=int(args.max_pixels * MP), local_only=is_loopback(args.host))
    uvicorn.run(app, host=args.host, port=args.port)
    return 0
