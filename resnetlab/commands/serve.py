"""`resnetlab serve RUN_OR_CHECKPOINT_OR_ONNX`: an HTTP API and a web page for a trained classifier."""

from __future__ import annotations

import argparse
import errno
import math
import socket
import sys

from resnetlab.commands import INFERENCE_AMP_HELP

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP, with a web page",
        description="Serve a run folder, checkpoint or exported .onnx file: POST /predict (multipart field 'file' or "
        "raw image bytes, ?topk=N) returns [{label, score}]; GET /health, GET /info, GET /openapi.json; a page at / "
        "to drop an image and see its top-5. Concurrent requests are batched into one forward pass.",
    )
    p.add_argument("model", metavar="RUN_OR_CHECKPOINT_OR_ONNX", help="run folder, checkpoint file or .onnx file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="(default: 8000; 0: any free port, printed)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload accepted, in MB (default: 10)")
    p.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="largest image accepted, width x height (default: 40M)"
    )
    p.add_argument("--max-batch", type=int, default=16, help="most images per batched forward pass (default: 16)")
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=10.0,
        help="longest wait for a fuller batch, only while other requests are arriving (default: 10)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help=INFERENCE_AMP_HELP)
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="uvicorn's log level (default: info, a line per request)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.errors import ResnetlabError

    try:
        import uvicorn

        from resnetlab.serve.app import create_app
    except ModuleNotFoundError as exc:
        if exc.name not in ("uvicorn", "fastapi", "starlette", "multipart", "python_multipart"):
            raise
        raise ResnetlabError(f"serve needs {exc.name}: pip install 'resnetlab[serve]'") from exc
    from resnetlab.predict import load

    if not math.isfinite(args.max_upload_mb) or args.max_upload_mb <= 0:  # nan and inf are floats too
        raise ResnetlabError(f"--max-upload-mb {args.max_upload_mb}: must be positive")
    if args.max_pixels < 1:
        raise ResnetlabError(f"--max-pixels {args.max_pixels}: must be positive")
    if not 0 <= args.port < 65536:
        raise ResnetlabError(f"--port {args.port}: choose 0..65535")
    if args.max_batch < 1:
        raise ResnetlabError(f"--max-batch {args.max_batch}: must be at least 1")
    sock = listen(args.host, args.port)  # before the model loads: a taken port is one line, not uvicorn's log
    clf = load(args.model, device=args.device, amp=args.amp)
    app = create_app(
        clf,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        max_batch=args.max_batch,
        max_wait_ms=args.batch_wait_ms,
    )
    if args.host not in LOOPBACK:
        print(
            f"warning: listening on {args.host}: anyone who can reach it may use the model (no authentication)",
            file=sys.stderr,
        )
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"serving {clf!r} at http://{host}:{sock.getsockname()[1]}/ (API: POST /predict, schema: /openapi.json)",
        file=sys.stderr,
    )
    uvicorn.Server(uvicorn.Config(app, log_level=args.log_level)).run(sockets=[sock])
    return 0


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), for uvicorn to serve on; a one-line error when that address is not free."""
    from resnetlab.errors import ResnetlabError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart over TIME_WAIT
        sock.bind((host, port))
    except (OSError, socket.gaierror) as exc:
        advice = (
            "another program is listening there: stop it, or choose another --port (0 picks a free one)"
            if exc.errno == errno.EADDRINUSE
            else "check --host (an address of this machine, e.g. 127.0.0.1 or 0.0.0.0)"
        )
        raise ResnetlabError(f"--host {host} --port {port}: cannot listen ({exc.strerror or exc}); {advice}") from exc
    return sock
