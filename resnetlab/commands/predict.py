"""`resnetlab predict RUN_OR_CHECKPOINT INPUT...`: top-k labels for image files, folders and glob patterns."""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import sys
from pathlib import Path
from typing import Any

from resnetlab.commands import INFERENCE_AMP_HELP

GLOB_CHARS = ("*", "?", "[")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict the class of images",
        description="Predict labels for images with a trained model, using the checkpoint's own preprocessing. "
        "INPUT may be image files, folders (searched recursively) or quoted glob patterns such as 'photos/**/*.jpg'. "
        "Unreadable files are reported with the reason; the others are still predicted; the exit code is 1 if any "
        "input failed.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint file (.pt) or .onnx file")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="image files, folders or glob patterns")
    p.add_argument(
        "--topk", "--top-k", type=int, default=None, help="labels per image (default: 5, or 1 with under 5 classes)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--csv", metavar="FILE", help="also write the results as CSV")
    p.add_argument("--grid", metavar="FILE.png", help="also draw the images titled with their top prediction")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average with the horizontal flip")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (default: 16 on CPU, 64 on CUDA)"
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help=INFERENCE_AMP_HELP)
    p.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> list[str | dict[str, str]]:
    """Files as given, folders scanned recursively for images, glob patterns expanded; in order, without repeats.

    An input that names nothing becomes an error entry `{"path", "error"}` in its place.
    """
    from resnetlab.data.folder import scan_images

    entries: list[str | dict[str, str]] = []

    def add_dir(folder: str) -> None:
        found = scan_images([folder], recursive=True)
        entries.extend(str(p) for p in found)
        if not found:
            entries.append({"path": folder, "error": "folder contains no images"})

    for item in inputs:
        if os.path.isdir(item):
            add_dir(item)
        elif os.path.exists(item):
            entries.append(item)  # named explicitly: tried even without an image extension, an error if not one
        elif any(c in item for c in GLOB_CHARS):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                entries.append({"path": item, "error": "pattern matches no files"})
            for match in matches:
                if os.path.isdir(match):
                    add_dir(match)
                else:
                    entries.append(match)
        else:
            entries.append({"path": item, "error": "no such file or folder"})
    seen: set[str] = set()
    unique = []
    for entry in entries:
        key = entry if isinstance(entry, str) else entry["path"]
        if key not in seen:
            seen.add(key)
            unique.append(entry)
    return unique


def format_table(results: list[dict[str, Any]]) -> str:
    """One line per input: the path, then `label score` pairs best first, or the error."""
    from resnetlab.metrics import display_width, ljust

    width = min(60, max((display_width(r["path"]) for r in results), default=4))
    lines = []
    for r in results:
        if "error" in r:
            lines.append(f"{ljust(r['path'], width)}  ERROR: {r['error']}")
        else:
            preds = "  ".join(f"{p['label']} {p['score']:.3f}" for p in r["predictions"])
            lines.append(f"{ljust(r['path'], width)}  {preds}")
    return "\n".join(lines)


def write_csv(results: list[dict[str, Any]], path: str | os.PathLike, topk: int) -> None:
    header = ["path"] + [f"{kind}_{i}" for i in range(1, topk + 1) for kind in ("label", "score")] + ["error"]
    # surrogateescape: a file name that is not valid UTF-8 is written as the bytes it has on disk.
    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for r in results:
            cells = []
            for p in r.get("predictions", []):
                cells += [p["label"], f"{p['score']:.6f}"]
            cells += [""] * (2 * topk - len(cells))
            writer.writerow([r["path"], *cells, r.get("error", "")])


def run(args: argparse.Namespace) -> int:
    from resnetlab.errors import ResnetlabError
    from resnetlab.predict import load
    from resnetlab.report import picture_path

    if args.topk is not None and args.topk < 1:
        raise ResnetlabError(f"--topk {args.topk}: must be at least 1")
    if args.grid:
        picture_path(args.grid, "--grid")
    if args.csv:  # checked and its folder made before the model runs, as for --grid
        if Path(args.csv).is_dir():
            example = Path(args.csv) / "predictions.csv"
            raise ResnetlabError(f"--csv {args.csv} is a folder; name a file, e.g. {example}")
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
    entries = expand_inputs(args.inputs)
    clf = load(args.checkpoint, device=args.device, amp=args.amp)
    topk = min(args.topk or (5 if len(clf.classes) >= 5 else 1), len(clf.classes))
    paths = [e for e in entries if isinstance(e, str)]
    predicted = iter(clf.predict_paths(paths, topk=topk, batch_size=args.batch_size, tta=args.tta))
    results = [next(predicted) if isinstance(e, str) else e for e in entries]

    if args.json:
        json.dump(results, sys.stdout, ensure_ascii=False, indent=2)
        print()
    else:
        print(format_table(results))
    if args.csv:
        write_csv(results, args.csv, topk)
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.grid:
        from resnetlab.report.eval_plots import plot_prediction_grid

        plot_prediction_grid(results, Path(args.grid))
        print(f"wrote {args.grid}", file=sys.stderr)

    failed = sum("error" in r for r in results)
    if failed:
        print(f"{failed} of {len(results)} inputs failed; see the errors above", file=sys.stderr)
    return 1 if failed else 0
