"""`resnetlab serve` under load: requests/s and p50/p99 latency for real photos at concurrency 1 and 8.

    python benchmarks/bench_serve.py                       # 200 TrashNet photos, untrained ResNet-18 checkpoint
    python benchmarks/bench_serve.py runs/trash/best.onnx  # a run folder, checkpoint or .onnx file of your own
    python benchmarks/bench_serve.py --limit 8             # smoke run

The script starts `resnetlab serve` itself on 127.0.0.1 (a separate process, as in production), waits for /health,
sends each photo once per concurrency level as a multipart upload (the same bytes a browser sends) from N client
threads, each with its own keep-alive connection, and stops the server. Without a model argument it builds a randomly
initialised checkpoint (no pretrained weights are reachable here; speed does not depend on the weights). Also prints
the server's micro-batching statistics (mean images per forward pass) for each level.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from _common import CLASSES, trashnet_sample


def make_checkpoint(folder: Path, arch: str) -> Path:
    """An untrained checkpoint in `resnetlab train`'s schema, with TrashNet's classes."""
    import torch

    from resnetlab.engine.checkpoint import model_payload, save_checkpoint
    from resnetlab.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=len(CLASSES))
    return save_checkpoint(folder / "best.pt", model_payload(arch, model, list(CLASSES)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "resnetlab", "serve", str(model), "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd + extra)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("server did not become healthy within 180 s")


def run_level(url: str, payloads: list[tuple[str, bytes]], concurrency: int) -> dict:
    """Send every payload once from `concurrency` threads; per-request latencies and the overall rate."""
    shards = [payloads[i::concurrency] for i in range(concurrency)]

    def worker(shard: list[tuple[str, bytes]]) -> list[float]:
        times = []
        with httpx.Client(base_url=url, timeout=120) as client:
            for name, data in shard:
                start = time.perf_counter()
                res = client.post("/predict", files={"file": (name, data, "image/jpeg")})
                times.append(time.perf_counter() - start)
                if res.status_code != 200:
                    raise RuntimeError(f"{name}: HTTP {res.status_code} {res.text[:200]}")
        return times

    before = httpx.get(f"{url}/health").json()["batching"]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for times in pool.map(worker, shards) for t in times]
    wall = time.perf_counter() - start
    after = httpx.get(f"{url}/health").json()["batching"]
    latencies.sort()
    batches = after["batches"] - before["batches"]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "req_per_s": len(latencies) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "mean_batch": (after["requests"] - before["requests"]) / batches if batches else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", nargs="?", help="run folder, checkpoint or .onnx (default: an untrained --arch)")
    parser.add_argument("--arch", default="resnet18", help="architecture of the default untrained model")
    parser.add_argument("--limit", type=int, default=200, help="photos per concurrency level (default: 200)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="client threads (default: 1 8)")
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests first (default: 8)")
    parser.add_argument("--server-args", default="", help="extra `resnetlab serve` options, e.g. '--max-batch 8'")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    paths = trashnet_sample(args.limit)
    payloads = [(p.name, p.read_bytes()) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else make_checkpoint(Path(tmp), args.arch)
        port = free_port()
        proc = start_server(model, port, args.server_args.split())
        url = f"http://127.0.0.1:{port}"
        try:
            info = httpx.get(f"{url}/info").json()
            print(
                f"model {info['model']['arch']} ({info['model']['backend']} {info['model']['precision']}), "
                f"{len(payloads)} TrashNet photos, {os.cpu_count()} CPUs"
            )
            run_level(url, payloads[: args.warmup] or payloads[:1], 2)
            results = [run_level(url, payloads, c) for c in args.concurrency]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{'concurrency':>11} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'imgs/forward':>12}")
    for r in results:
        print(
            f"{r['concurrency']:>11} {r['requests']:>8} {r['req_per_s']:>8.1f} {r['p50_ms']:>8.1f} "
            f"{r['p99_ms']:>8.1f} {r['mean_batch']:>12.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
