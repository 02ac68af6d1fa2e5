"""`resnetlab explain RUN_OR_CHECKPOINT IMAGE --out FILE.png`: a Grad-CAM heat map of what the model looked at."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="show which image regions drive a prediction (Grad-CAM)",
        description="Grad-CAM from the model's last feature stage for the predicted class (or --class), drawn over "
        "the image. The region outside the centre crop that the model sees is dimmed.",
    )
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT", help="run folder or checkpoint file (.pt)")
    p.add_argument("image", metavar="IMAGE", help="image file to explain")
    p.add_argument(
        "--out", metavar="FILE.png", help="where to write the picture (default: IMAGE's name + -gradcam.png, here)"
    )
    p.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class instead of the prediction")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resnetlab.explain import explain, save_explanation
    from resnetlab.predict import load
    from resnetlab.report import picture_path

    out = picture_path(args.out or f"{Path(args.image).stem}-gradcam.png", "--out")
    # The default precision, as `predict` uses, so the printed score is the one `predict` prints; Grad-CAM's own
    # pass runs without autocast (fp32 gradients) whatever the classifier's precision.
    clf = load(args.checkpoint, device=args.device)
    result = explain(clf, args.image, class_name=args.class_name)
    path = save_explanation(result, out)
    print(f"{args.image}: {result.label} ({result.score:.3f}); Grad-CAM written to {path}")
    return 0
