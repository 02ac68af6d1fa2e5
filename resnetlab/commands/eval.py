"""`resnetlab eval RUN_OR_CHECKPOINT [DIR]`: accuracy, per-class metrics, confusion matrix and the worst mistakes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from resnetlab.commands import INFERENCE_AMP_HELP

SPLITS = ("val", "test", "train")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a trained model",
        description="Evaluate a trained model: top-1/top-5 accuracy, loss, per-class precision/recall/F1, macro and "
        "weighted averages. Without DIR, the run's own split (recorded in the checkpoint) is used. DIR may be any "
        "folder of class sub-folders named after the model's classes, all or some (all its images are used), or a "
        "folder with train/val/test sub-folders (then --split picks one). Writes eval.json, confusion_matrix.png and "
        "mistakes.png into the run folder (or --out).",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder, checkpoint file (.pt) or .onnx file")
    p.add_argument("data", metavar="DIR", nargs="?", help="folder to evaluate on (default: the run's own data)")
    p.add_argument("--split", choices=SPLITS, default="val", help="which split to evaluate (default: val)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per forward pass (default: 16 on CPU, 64 on CUDA)"
    )
    p.add_argument("--out", metavar="DIR", help="where to write eval.json and the plots (default: the run folder)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average with the horizontal flip")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"), help=INFERENCE_AMP_HELP)
    p.set_defaults(func=run)


def _split_samples(splits: Any, split: str, where: str) -> list[tuple[Path, int]]:
    from resnetlab.errors import ResnetlabError

    samples = list(getattr(splits, split))
    if not samples:
        raise ResnetlabError(f"{where}: the {split} split is empty; choose another with --split or pass a folder")
    return samples


EvalData = tuple[list[tuple[Path, int]], list[str], list[tuple[Path, str]], str, str | None]


def folder_samples(folder: Path, split: str) -> EvalData:
    """(samples, classes, skipped, description, split used) for a user-given folder.

    `ROOT/<class>/*` evaluates every image in it; `ROOT/train|val|test/<class>/*` evaluates the `split` part.
    """
    from resnetlab.data.folder import make_splits

    splits = make_splits(folder)
    if splits.layout == "folders":
        # The carved train/val parts of a plain class folder partition it: their union is every usable image.
        samples, described, split = list(splits.train) + list(splits.val), f"all of {folder}", None
    else:
        samples, described = _split_samples(splits, split, str(folder)), f"{split} split of {folder}"
    return samples, list(splits.classes), list(splits.skipped), described, split


def recorded_samples(record: dict[str, Any], split: str, where: str) -> EvalData:
    """(samples, classes, skipped, description, split used) for the split the checkpoint's data record describes."""
    from resnetlab.data.folder import DatasetSplits
    from resnetlab.errors import ResnetlabError

    if not record:
        raise ResnetlabError(f"{where}: no dataset is recorded in it; pass the folder to evaluate on as DIR")
    splits = DatasetSplits.from_record(record)
    samples = _split_samples(splits, split, where)
    described = f"{split} split of {record.get('root', '?')}"
    if record.get("val_dir") and split == "val":  # trained with --val-dir: validation images came from there
        described = f"validation folder {record['val_dir']}"
    return samples, list(splits.classes), list(splits.skipped), described, split


def map_labels(
    samples: list[tuple[Path, int]], data_classes: list[str], model_classes: list[str], where: str
) -> list[tuple[Path, int]]:
    """Relabel samples into the model's class indices; refuse data with classes the model does not know.

    A folder with only some of the model's classes is fine (a test set without one class, or a folder of one
    class's new photos): the absent classes get support 0 and the macro averages leave them out.
    """
    from resnetlab.errors import ResnetlabError

    if extra := sorted(set(data_classes) - set(model_classes)):
        raise ResnetlabError(
            f"{where}: classes the model does not know: {extra}; model classes {model_classes}, data classes "
            f"{data_classes}; evaluate on folders named after the model's classes"
        )
    index = {name: i for i, name in enumerate(model_classes)}
    return [(path, index[data_classes[label]]) for path, label in samples]


def mistakes(paths: list[str], scores: Any, labels: Any, classes: list[str]) -> list[dict[str, Any]]:
    """Every wrong prediction, most confident first: what mistakes.png draws the top of, for a script to read."""
    probs = scores.exp()  # (N, K) from log-probabilities
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten().tolist()
    wrong.sort(key=lambda i: -float(confidence[i]))
    return [
        {
            "path": paths[i],
            "label": classes[int(labels[i])],
            "predicted": classes[int(predicted[i])],
            "score": round(float(confidence[i]), 6),
            "label_score": round(float(probs[i, labels[i]]), 6),
        }
        for i in wrong
    ]


def run(args: argparse.Namespace) -> int:
    import torch

    from resnetlab.engine.checkpoint import load_checkpoint, resolve_checkpoint_path
    from resnetlab.errors import ResnetlabError
    from resnetlab.metrics import classification_report, format_report
    from resnetlab.paths import write_json
    from resnetlab.predict import Classifier, load
    from resnetlab.report.eval_plots import plot_confusion_matrix, plot_mistakes

    source = Path(args.checkpoint)
    if source.suffix.lower() == ".onnx":
        clf, record, ckpt_path = load(source, device=args.device, amp=args.amp), {}, source
    else:
        ckpt_path = resolve_checkpoint_path(source)
        ckpt = load_checkpoint(ckpt_path)
        clf = Classifier.from_checkpoint(ckpt, device=args.device, amp=args.amp, source=ckpt_path)
        record = ckpt.get("data") or {}

    if args.data:
        from resnetlab.data.cifar10 import resolve_data_root

        data = resolve_data_root(args.data)  # a folder, or a dataset name such as cifar10
        samples, data_classes, skipped, described, split = folder_samples(data, args.split)
        where = str(args.data)
    else:
        samples, data_classes, skipped, described, split = recorded_samples(record, args.split, str(ckpt_path))
        where = f"{record.get('root', ckpt_path)}"
    samples = map_labels(samples, data_classes, clf.classes, where)

    print(f"evaluating {ckpt_path} ({clf.precision.describe()}) on {len(samples)} images: {described}")
    if absent := [name for name in clf.classes if name not in data_classes]:
        print(
            f"note: no images of {', '.join(absent)} there: support 0; in the macro averages only where predicted"
            " (as scikit-learn counts them)"
        )
    if skipped:
        print(f"skipped {len(skipped)} unreadable files while scanning (first: {skipped[0][0]}: {skipped[0][1]})")
    paths = [str(p) for p, _ in samples]
    scores, ok, failed = clf.scores_for(paths, batch_size=args.batch_size, tta=args.tta)
    failed = [(i, reason.removeprefix(f"{paths[i]}: ")) for i, reason in failed]  # the reason names the file too
    for i, reason in failed:
        print(f"skipped {paths[i]}: {reason}", file=sys.stderr)
    if failed and ok:
        print(f"{len(ok)} of the {len(paths)} images evaluated ({len(failed)} unreadable, left out)")
    if not ok:
        raise ResnetlabError(f"{where}: none of the {len(paths)} images could be read; nothing to evaluate")
    labels = torch.tensor([samples[i][1] for i in ok], dtype=torch.long)

    report = classification_report(scores, labels, clf.classes)
    print(format_report(report))

    out = Path(args.out) if args.out else (source if source.is_dir() else ckpt_path.parent)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "checkpoint": str(ckpt_path),
        "data": described,
        "split": split,
        "precision": clf.precision.describe(),
        "tta": args.tta,
        **report,
        "mistakes": mistakes([paths[i] for i in ok], scores, labels, clf.classes),
        "failed": [{"path": paths[i], "error": reason} for i, reason in failed],
        "skipped": [{"path": str(p), "error": reason} for p, reason in skipped],
    }
    write_json(out / "eval.json", result)
    plot_confusion_matrix(report["confusion_matrix"], clf.classes, out / "confusion_matrix.png")
    plot_mistakes([paths[i] for i in ok], labels.numpy(), scores.exp().numpy(), clf.classes, out / "mistakes.png")
    print(f"wrote eval.json, confusion_matrix.png, mistakes.png to {out}")
    return 0
