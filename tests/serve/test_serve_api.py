"""The HTTP API against a real uvicorn server on 127.0.0.1: predictions, schema, limits, bad input, concurrency."""

from __future__ import annotations

import asyncio
import io
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from .conftest import running_server

MAX_UPLOAD = 1 * 2**20
MAX_PIXELS = 2_000_000


@pytest.fixture(scope="module")
def clf(tiny_ckpt: Path):
    from resnetlab.predict import load

    return load(tiny_ckpt, amp="off")


@pytest.fixture(scope="module")
def base_url(clf):
    from resnetlab.serve.app import create_app

    app = create_app(clf, max_upload_bytes=MAX_UPLOAD, max_pixels=MAX_PIXELS, max_batch=8, max_wait_ms=20)
    with running_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(base_url=base_url, timeout=60) as c:
        yield c


def _assert_same(got: list[dict], want: list[dict]) -> None:
    assert [p["label"] for p in got] == [p["label"] for p in want]
    assert [p["score"] for p in got] == pytest.approx([p["score"] for p in want], abs=1e-4)


def png_claiming(width: int, height: int) -> bytes:
    """A small valid PNG whose header claims `width` x `height`: a decompression bomb's calling card."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21]))
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", crc)
    return bytes(data)


def test_predict_multipart_and_raw(client, clf, check_images) -> None:
    path = check_images[0]
    want = clf.predict(path, topk=5)[0]
    res = client.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert res.status_code == 200, res.text
    _assert_same(res.json(), want)
    assert len(res.json()) == 5 and sum(p["score"] for p in res.json()) <= 1.0 + 1e-6

    jpg = check_images[2]
    raw = client.post("/predict?topk=2", content=jpg.read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    _assert_same(raw.json(), clf.predict(jpg, topk=2)[0])


def test_topk(client, check_images) -> None:
    files = {"file": ("x.png", check_images[1].read_bytes())}
    assert len(client.post("/predict?topk=1", files=files).json()) == 1
    assert len(client.post("/predict?topk=100", files=files).json()) == 6  # capped at the number of classes
    assert client.post("/predict?topk=0", files=files).status_code == 422


def test_health_info_openapi_page(client, tiny_ckpt) -> None:
    assert client.head("/health").status_code == 200 and client.head("/").status_code == 200  # monitors' probes
    health = client.get("/health").json()
    assert health["status"] == "ok" and "mean_batch_size" in health["batching"]
    info = client.get("/info").json()
    assert info["classes"] == ["cardboard", "glass", "metal", "paper", "plastic", "trash"]
    assert info["model"]["arch"] == "CifarResNet" or info["model"]["arch"] == "resnet20"
    assert info["model"]["source"] == str(tiny_ckpt)
    assert info["preprocessing"]["crop_pct"] == 0.875 and info["preprocessing"]["interpolation"] == "bicubic"
    assert info["limits"] == {"max_upload_bytes": MAX_UPLOAD, "max_pixels": MAX_PIXELS}

    schema = client.get("/openapi.json").json()
    assert {"/predict", "/health", "/info"} <= set(schema["paths"])
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/octet-stream" in body
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN: switched off

    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert "http" not in page.text.split("<body>")[0].replace("http-equiv", "")  # no external assets in <head>
    for asset in ("/static/app.js", "/static/style.css"):
        res = client.get(asset)
        assert res.status_code == 200 and "cdn" not in res.text.lower() and "https://" not in res.text


def test_oversize_upload_refused(client) -> None:
    big = b"\xff\xd8" + b"\0" * (8 * MAX_UPLOAD)  # well past the socket buffers: the server must drain, not reset
    res = client.post("/predict", content=big, headers={"content-type": "application/octet-stream"})
    assert res.status_code == 413 and "too large" in res.json()["detail"]
    res = client.post("/predict", files={"file": ("big.jpg", big, "image/jpeg")})
    assert res.status_code == 413

    def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(16):
            yield b"\0" * (MAX_UPLOAD // 2)

    res = client.post("/predict", content=chunks())
    assert res.status_code == 413


def test_bombs_and_bad_images_refused(client, check_images, tmp_path) -> None:
    res = client.post("/predict", files={"file": ("bomb.png", png_claiming(60_000, 60_000), "image/png")})
    assert res.status_code == 413 and "pixels" in res.json()["detail"]
    # Under Pillow's own limit but over this server's: a real, well-compressed 2000x1500 PNG.
    buf = io.BytesIO()
    Image.new("RGB", (2000, 1500), (30, 120, 200)).save(buf, format="PNG")
    res = client.post("/predict", content=buf.getvalue(), headers={"content-type": "image/png"})
    assert res.status_code == 413 and "2000x1500" in res.json()["detail"]

    text = client.post("/predict", files={"file": ("notes.txt", b"hello, this is not an image\n", "text/plain")})
    assert text.status_code == 400 and "not an image" in text.json()["detail"]
    assert client.post("/predict", content=b"").status_code == 400
    truncated = check_images[2].read_bytes()[:5000]
    res = client.post("/predict", content=truncated, headers={"content-type": "image/jpeg"})
    assert res.status_code == 400 and "damaged" in res.json()["detail"]
    wrong_field = client.post("/predict", files={"image": ("a.png", check_images[0].read_bytes())})
    assert wrong_field.status_code == 400 and "'file'" in wrong_field.json()["detail"]
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"  # Pillow could open this via Ghostscript
    assert client.post("/predict", content=eps).status_code == 400

    # The server is still healthy and still answers correctly.
    assert client.get("/health").json()["status"] == "ok"
    ok = client.post("/predict", files={"file": ("c.png", check_images[0].read_bytes())})
    assert ok.status_code == 200 and len(ok.json()) == 5


def test_multipart_mistakes_are_named(client, check_images) -> None:
    image = check_images[0].read_bytes()
    two = client.post("/predict", files=[("file", ("a.png", image)), ("file", ("b.png", image))])
    assert two.status_code == 400 and "send one image per request" in two.json()["detail"]
    assert "malformed" not in two.json()["detail"]
    boundary = "xyz123"
    cut = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
           "Content-Type: image/png\r\n\r\n").encode() + image  # fmt: skip
    res = client.post("/predict", content=cut, headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert res.status_code == 400 and "closing boundary" in res.json()["detail"]


def test_a_client_that_hangs_up_mid_upload_leaves_no_traceback(base_url, client, caplog) -> None:
    import logging
    import socket

    host, port = base_url.removeprefix("http://").split(":")
    with caplog.at_level(logging.ERROR):
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
                + b"\xff\xd8" * 1000
            )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and client.get("/health").status_code == 200 and not caplog.records:
            time.sleep(0.2)
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    assert client.get("/health").json()["status"] == "ok"


def test_concurrent_requests(base_url, clf, check_images) -> None:
    want = {p.name: clf.predict(p, topk=3)[0] for p in check_images}
    jobs = [check_images[i % len(check_images)] for i in range(24)]

    def send(path: Path) -> tuple[str, list[dict]]:
        with httpx.Client(base_url=base_url, timeout=60) as c:
            res = c.post("/predict?topk=3", files={"file": (path.name, path.read_bytes())})
            assert res.status_code == 200, res.text
            return path.name, res.json()

    before = httpx.get(f"{base_url}/health").json()["batching"]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, jobs))
    for name, got in results:
        _assert_same(got, want[name])
    after = httpx.get(f"{base_url}/health").json()["batching"]
    assert after["requests"] - before["requests"] == len(jobs)
    assert after["batches"] - before["batches"] <= len(jobs)


def test_onnx_server_matches_checkpoint(tiny_onnx, clf, check_images) -> None:
    from resnetlab.predict import load
    from resnetlab.serve.app import create_app

    with running_server(create_app(load(tiny_onnx))) as url:
        info = httpx.get(f"{url}/info").json()
        assert info["model"]["backend"] == "onnxruntime" and info["model"]["arch"] == "resnet20"
        path = check_images[3]
        res = httpx.post(f"{url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60)
        assert res.status_code == 200
        _assert_same(res.json(), clf.predict(path, topk=5)[0])


def test_micro_batcher_groups_concurrent_images() -> None:
    """While one batch runs, requests that arrive queue up and share the next forward pass."""
    from resnetlab.serve.app import MicroBatcher

    sizes = []

    def slow_scores(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(len(batch))
        time.sleep(0.2)
        return batch.flatten(1)[:, :2] * 2

    async def scenario() -> list[torch.Tensor]:
        batcher = MicroBatcher(slow_scores, max_batch=4, max_wait_ms=5)
        await batcher.start()
        try:

            async def one(i: int) -> torch.Tensor:
                async with batcher.incoming():
                    future = batcher.put(torch.full((1, 2, 2), float(i)))
                return await future

            first = asyncio.create_task(one(0))
            await asyncio.sleep(0.05)  # the first batch (of 1) is running now
            rest = [asyncio.create_task(one(i)) for i in range(1, 7)]
            return await asyncio.gather(first, *rest)
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert [float(r[0]) for r in results] == [2.0 * i for i in range(7)]  # each request got its own row back
    assert sizes == [1, 4, 2]  # max_batch respected; six waiting images ran in two passes, not six


def test_serve_command_validates_options(tiny_ckpt, capsys) -> None:
    from resnetlab.cli import main

    for bad in ("0", "nan", "inf"):
        assert main(["serve", str(tiny_ckpt), "--max-upload-mb", bad]) == 2
        assert f"--max-upload-mb {float(bad)}: must be positive" in capsys.readouterr().err
    assert main(["serve", str(tiny_ckpt) + ".missing"]) == 2
    assert "no such run folder or checkpoint" in capsys.readouterr().err


def test_serve_without_its_extra_is_one_line(tiny_ckpt, capsys, monkeypatch) -> None:
    import sys

    from resnetlab.cli import main

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as when `pip install resnetlab` left out [serve]
    assert main(["serve", str(tiny_ckpt)]) == 2
    assert "serve needs uvicorn: pip install 'resnetlab[serve]'" in capsys.readouterr().err


def test_a_taken_port_is_one_line_before_the_model_loads(tiny_ckpt, capsys, monkeypatch) -> None:
    import socket

    from resnetlab import predict
    from resnetlab.cli import main

    monkeypatch.setattr(predict, "load", lambda *a, **k: pytest.fail("loaded the model first"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(tiny_ckpt), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"resnetlab serve: error: --host 127.0.0.1 --port {port}: cannot listen (") and (
        "choose another --port (0 picks a free one)\n" in err
    ), err


def test_serve_command_on_a_free_port_answers(tiny_ckpt) -> None:
    # `--port 0`: the OS picks a free port and the command prints it; the served API then answers there.
    import json
    import re
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    proc = subprocess.Popen(
        [sys.executable, "-m", "resnetlab", "serve", str(tiny_ckpt), "--port", "0", "--log-level", "warning"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while not lines or not lines[-1].startswith("serving "):  # a warning may come first
            lines.append(proc.stderr.readline())
            assert lines[-1] and len(lines) < 50, lines
        match = re.search(r"at (http://127\.0\.0\.1:(\d+)/)", lines[-1])
        assert match and int(match.group(2)) > 0, lines
        for _ in range(100):  # the socket is bound before the line is printed; uvicorn starts serving soon after
            try:
                with urllib.request.urlopen(match.group(1) + "health", timeout=5) as response:
                    assert json.load(response)["status"] == "ok"
                break
            except urllib.error.URLError:
                time.sleep(0.1)
        else:
            pytest.fail("no answer from " + match.group(1))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
