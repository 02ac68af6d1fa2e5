"""Classification metrics from logits and labels, in numpy (no scikit-learn at runtime).

`classification_report` is the one call `resnetlab eval` makes: top-k accuracy, cross-entropy loss, per-class
precision / recall / F1 / support, macro and weighted averages and the confusion matrix, as a JSON-able dict.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def log_softmax(logits: Any) -> np.ndarray:
    """Numerically stable log-softmax over the last axis, in float64."""
    z = _as_numpy(logits).astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: Any) -> np.ndarray:
    return np.exp(log_softmax(logits))


def cross_entropy(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the true labels."""
    labels = _as_numpy(labels).astype(np.int64)
    if labels.size == 0:
        return float("nan")
    logp = log_softmax(logits)
    return float(-logp[np.arange(labels.size), labels].mean())


def top_classes(scores: Any, k: int) -> tuple[Any, Any]:
    """(values, indices) of the k highest scores of each row of a torch tensor (N, K), best first, ties broken by the
    lower class index: as `np.argmax`, `torch.argmax` and `topk_accuracy` break them. `torch.topk` leaves the order
    of equal scores unspecified (it gave [2, 4, 1] for a row tied at 1, 2 and 4), and bf16 logits tie often enough
    that validation, `eval` and `predict` disagreed on the same image."""
    values, indices = scores.sort(dim=1, descending=True, stable=True)
    return values[:, :k], indices[:, :k]


def topk_accuracy(logits: Any, labels: Any, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose true label is among the k highest logits, for each k (k capped at #classes).

    Ties are broken by index order (stable sort), as `top_classes` and argmax break them.
    """
    logits = _as_numpy(logits)
    labels = _as_numpy(labels).astype(np.int64)
    if labels.size == 0:
        return {k: float("nan") for k in ks}
    order = np.argsort(-logits, axis=1, kind="stable")  # (N, K) best first
    hits = order == labels[:, None]
    return {k: float(hits[:, : min(k, logits.shape[1])].any(axis=1).mean()) for k in ks}


def confusion_matrix(labels: Any, preds: Any, num_classes: int) -> np.ndarray:
    """Counts `cm[true, predicted]`, shape (num_classes, num_classes), int64."""
    labels = _as_numpy(labels).astype(np.int64)
    preds = _as_numpy(preds).astype(np.int64)
    flat = np.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # 0/0 is reported as 0 (scikit-learn's zero_division=0), never NaN.
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class_metrics(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (rows = true, columns = predicted)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support.astype(np.int64),
        "predicted": predicted.astype(np.int64),
    }


def averages(per_class: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Macro (unweighted over the classes in the data or the predictions, as scikit-learn's) and support-weighted
    averages of precision, recall and F1."""
    support = per_class["support"].astype(np.float64)
    # A class neither in the data nor predicted would drag macro averages to 0 for no reason; one only predicted
    # stays: its wrong predictions are precision lost (left out, a folder of one class scored macro precision 1.0).
    present = (support > 0) | (per_class["predicted"] > 0)
    out: dict[str, dict[str, float]] = {"macro": {}, "weighted": {}}
    for name in ("precision", "recall", "f1"):
        values = per_class[name]
        out["macro"][name] = float(values[present].mean()) if present.any() else float("nan")
        out["weighted"][name] = float((values * support).sum() / support.sum()) if support.sum() else float("nan")
    for kind in out:
        out[kind]["support"] = int(support.sum())
    return out


def classification_report(logits: Any, labels: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Everything `resnetlab eval` prints and writes to `eval.json`, computed from logits (N, K) and labels (N,)."""
    logits = _as_numpy(logits)
    labels = _as_numpy(labels).astype(np.int64)
    num_classes = len(classes)
    preds = np.argmax(logits, axis=1) if labels.size else np.zeros(0, dtype=np.int64)
    cm = confusion_matrix(labels, preds, num_classes)
    per_class = per_class_metrics(cm)
    ks = (1, 5) if num_classes >= 5 else (1,)
    acc = topk_accuracy(logits, labels, ks)
    return {
        "num_samples": int(labels.size),
        "top1": acc[1],
        "top5": acc.get(5),
        "loss": cross_entropy(logits, labels),
        "per_class": [
            {
                "class": name,
                "precision": float(per_class["precision"][i]),
                "recall": float(per_class["recall"][i]),
                "f1": float(per_class["f1"][i]),
                "support": int(per_class["support"][i]),
            }
            for i, name in enumerate(classes)
        ],
        **averages(per_class),
        "classes": list(classes),
        "confusion_matrix": cm.tolist(),
    }


def display_width(text: str) -> int:
    """Terminal columns `text` takes: CJK and other wide characters count twice."""
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in text)


def ljust(text: str, width: int) -> str:
    """`str.ljust` by display width, so tables with Chinese class names stay aligned."""
    return text + " " * max(0, width - display_width(text))


def format_report(report: dict[str, Any]) -> str:
    """A plain-text summary and per-class table, like scikit-learn's `classification_report`."""
    width = max([len("weighted avg")] + [display_width(row["class"]) for row in report["per_class"]])
    lines = [f"samples {report['num_samples']}   top-1 {report['top1']:.2%}"]
    if report.get("top5") is not None:
        lines[0] += f"   top-5 {report['top5']:.2%}"
    lines[0] += f"   loss {report['loss']:.4f}"
    header = f"{'class':<{width}}  {'precision':>9}  {'recall':>9}  {'f1':>9}  {'support':>7}"
    lines += ["", header, "-" * len(header)]

    def row(name: str, m: dict[str, Any]) -> str:
        return f"{ljust(name, width)}  {m['precision']:>9.3f}  {m['recall']:>9.3f}  {m['f1']:>9.3f}  {m['support']:>7d}"

    lines += [row(r["class"], r) for r in report["per_class"]]
    lines += ["-" * len(header), row("macro avg", report["macro"]), row("weighted avg", report["weighted"])]
    return "\n".join(lines)
