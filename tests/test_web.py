"""`nanoocr serve`: the JSON API (schema, limits, errors, a queue shared by concurrent requests) through
FastAPI's TestClient, and the page itself in a real headless Chromium. The tiny random model writes
gibberish, so these check structure and behaviour, never words."""

import asyncio
import base64
import io
import os
import shutil
import socket
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from nanoocr.reader import Reader
from nanoocr.web.app import create_app

PAGE_KEYS = {"page", "text", "markdown", "boxes", "width", "height", "overlay_png_base64", "tokens", "seconds"}


def png(size=(120, 90), text="hello"):
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((8, 8), text, fill="black")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def pdf(n):
    pages = [Image.new("RGB", (100, 130), (255, 255 - 40 * i, 255)) for i in range(n)]
    buf = io.BytesIO()
    pages[0].save(buf, format="PDF", save_all=True, append_images=pages[1:])
    return buf.getvalue()


@pytest.fixture(scope="module")
def reader(tiny_model_dir):
    return Reader.from_dir(tiny_model_dir, device="cpu", mode="tiny", max_new_tokens=16)


@pytest.fixture(scope="module")
def client(reader):
    with TestClient(create_app(reader, max_pages=2, model_name="tiny")) as c:
        yield c


def post(client, data, name="page.png", **fields):
    return client.post("/api/ocr", files={"file": (name, data)}, data=fields)


def test_health_page_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok", "model": "tiny", "device": "cpu", "mode": "tiny",
                                             "queued": 0}
    home = client.get("/")
    assert home.status_code == 200 and 'type="file"' in home.text and "http" not in home.text.split("<script>")[0]
    assert client.get("/docs").status_code == 200
    assert "/api/ocr" in client.get("/openapi.json").json()["paths"]


def test_image(client):
    r = post(client, png((120, 90)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["warning"] is None and len(body["pages"]) == 1
    p = body["pages"][0]
    assert set(p) == PAGE_KEYS
    assert (p["page"], p["width"], p["height"]) == (1, 120, 90)
    assert isinstance(p["text"], str) and isinstance(p["markdown"], str) and 0 < p["tokens"] <= 16
    overlay = Image.open(io.BytesIO(base64.b64decode(p["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (120, 90)


def test_pdf_pages_and_page_limit(client):
    r = post(client, pdf(2), "two.pdf", prompt="free", mode="base", max_new_tokens="4")
    assert r.status_code == 200, r.text
    assert [p["page"] for p in r.json()["pages"]] == [1, 2] and r.json()["warning"] is None
    assert all(p["tokens"] <= 4 for p in r.json()["pages"])
    r = post(client, pdf(3), "three.pdf")
    assert r.status_code == 200, r.text
    assert len(r.json()["pages"]) == 2 and "3 pages" in r.json()["warning"]  # max_pages=2: the rest is skipped


def test_bad_files_are_400(client):
    for name, data in [("empty.png", b""), ("notes.txt", b"just some text\n"), ("cut.png", png()[:80]),
                       ("cut.pdf", pdf(2)[:200])]:
        r = post(client, data, name)
        assert r.status_code == 400, (name, r.text)
        assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def test_bad_parameters_are_422(client):
    r = post(client, png(), mode="huge")
    assert r.status_code == 422 and "huge" in r.json()["detail"]
    assert post(client, png(), prompt="locate").status_code == 422  # locate needs ref
    assert post(client, png(), max_new_tokens="0").status_code == 422
    assert post(client, png(), max_new_tokens="17").status_code == 422  # over the server's cap
    assert post(client, png(), prompt="Read the title.", max_new_tokens="3").status_code == 200  # free text


def test_upload_limits_are_413(reader):
    small = TestClient(create_app(reader, max_upload_mb=0.01))  # 10 KB
    noise = Image.effect_noise((200, 200), 80).convert("RGB")
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    big = buf.getvalue()
    assert len(big) > 100_000
    r = post(small, big)  # refused from its Content-Length
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert post(small, big[:12_000]).status_code == 413  # the file alone is over, the body within the slack
    # no Content-Length: the cap on the bytes actually read stops it
    request = httpx.Request("POST", "http://x/api/ocr", files={"file": ("big.png", big)})
    body, ctype = request.read(), request.headers["content-type"]
    r = small.post("/api/ocr", content=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]),
                   headers={"content-type": ctype})
    assert r.status_code == 413
    assert post(small, png()).status_code == 200


def test_timeout_is_504(reader):
    r = post(TestClient(create_app(reader, timeout_s=0)), png())
    assert r.status_code == 504 and "timeout" in r.json()["detail"]


def test_concurrent_requests_queue_for_the_model(reader, monkeypatch):
    running, most = 0, 0
    lock = threading.Lock()
    read = Reader.read

    def counting_read(self, *a, **kw):
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.03)  # widen the window in which a second generation could sneak in
            return read(self, *a, **kw)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(Reader, "read", counting_read)
    app = create_app(reader)

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as c:
            jobs = [c.post("/api/ocr", files={"file": (f"p{i}.png", png(text=str(i)))},
                           data={"max_new_tokens": "8"}) for i in range(20)]
            slow = asyncio.ensure_future(asyncio.gather(*jobs))
            health, busy = {"queued": 0}, False
            while not slow.done() and not health["queued"]:  # the uploads are parsed first: poll, not one look
                await asyncio.sleep(0.05)
                health = (await c.get("/healthz")).json()  # answered while the queue is busy: no blocked loop
                busy = not slow.done()
            return await slow, health, busy

    responses, health, busy = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 20
    assert all(len(r.json()["pages"]) == 1 for r in responses)
    assert most == 1  # never two generations at once on the shared model
    assert busy and health["status"] == "ok" and health["queued"] > 0


# ----------------------------------------------------------------------------------------------
# the page in a real browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(reader):
    import uvicorn
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(reader), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def chrome(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.skip("chromium is not installed (apt-get install chromium chromium-driver)")
    if not (os.access(CHROMEDRIVER, os.X_OK) or shutil.which("chromedriver")):
        pytest.skip("chromedriver is not installed (apt-get install chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(flag)
    driver_path = CHROMEDRIVER if os.access(CHROMEDRIVER, os.X_OK) else shutil.which("chromedriver")
    return webdriver.Chrome(service=Service(driver_path), options=opts)


@pytest.mark.slow
def test_browser_upload(live_server, tmp_path):
    driver = chrome(tmp_path)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        image = tmp_path / "page.png"
        image.write_bytes(png((160, 120), "browser test"))
        driver.get(live_server)
        WebDriverWait(driver, 10).until(lambda d: "cpu" in d.find_element(By.ID, "info").text)  # /healthz answered
        driver.find_element(By.ID, "file").send_keys(str(image))

        def done(d):
            areas = d.find_elements(By.CSS_SELECTOR, "textarea.raw")
            return (areas and areas[0].get_attribute("value")) or d.find_element(By.ID, "error").is_displayed()
        WebDriverWait(driver, 60).until(done)
        error = driver.find_element(By.ID, "error")
        assert not error.is_displayed(), error.text
        assert driver.find_element(By.CSS_SELECTOR, "textarea.raw").get_attribute("value")
        overlay = driver.find_element(By.CSS_SELECTOR, "img.overlay")
        assert driver.execute_script("return arguments[0].naturalWidth", overlay) == 160  # the PNG decoded
        assert not driver.find_element(By.ID, "busy").is_displayed()
    finally:
        driver.quit()
