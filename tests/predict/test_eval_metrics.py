"""resnetlab.metrics against scikit-learn (a test-only reference) and against hand-worked examples."""

from __future__ import annotations

import numpy as np
import pytest

from resnetlab import metrics


@pytest.fixture()
def random_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=300)
    logits = rng.normal(size=(300, 7))
    logits[np.arange(300), labels] += 1.0  # better than chance, not perfect
    return logits, labels


def test_matches_scikit_learn(random_case):
    sk = pytest.importorskip("sklearn.metrics")
    logits, labels = random_case
    classes = [f"c{i}" for i in range(7)]
    report = metrics.classification_report(logits, labels, classes)
    preds = logits.argmax(1)

    np.testing.assert_array_equal(report["confusion_matrix"], sk.confusion_matrix(labels, preds, labels=range(7)))
    p, r, f, s = sk.precision_recall_fscore_support(labels, preds, labels=range(7), zero_division=0)
    for i, row in enumerate(report["per_class"]):
        assert row["class"] == classes[i]
        assert row["precision"] == pytest.approx(p[i])
        assert row["recall"] == pytest.approx(r[i])
        assert row["f1"] == pytest.approx(f[i])
        assert row["support"] == s[i]
    for avg in ("macro", "weighted"):
        p, r, f, _ = sk.precision_recall_fscore_support(labels, preds, average=avg, zero_division=0)
        assert report[avg]["precision"] == pytest.approx(p)
        assert report[avg]["recall"] == pytest.approx(r)
        assert report[avg]["f1"] == pytest.approx(f)
    assert report["top1"] == pytest.approx(sk.accuracy_score(labels, preds))
    assert report["top5"] == pytest.approx(sk.top_k_accuracy_score(labels, logits, k=5, labels=range(7)))
    probs = metrics.softmax(logits)
    assert report["loss"] == pytest.approx(sk.log_loss(labels, probs, labels=range(7)), rel=1e-6)


def test_hand_worked_example():
    # 4 samples, 3 classes: true 0,0,1,2; predicted 0,1,1,1.
    logits = np.array([[3.0, 0, 0], [0, 2, 1], [0, 5, 0], [1, 2, 0]])
    labels = np.array([0, 0, 1, 2])
    report = metrics.classification_report(logits, labels, ["a", "b", "c"])
    assert report["top1"] == 0.5
    assert report["top5"] is None  # under 5 classes there is no top-5
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]
    a, b, c = report["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (1.0, 0.5, 2)
    assert (b["precision"], b["recall"]) == (pytest.approx(1 / 3), 1.0)
    assert (c["precision"], c["recall"], c["f1"]) == (0.0, 0.0, 0.0)  # never predicted: 0, not NaN
    assert metrics.topk_accuracy(logits, labels, ks=(2,))[2] == 0.5  # samples 1 and 3 rank their label third


def test_classes_without_samples_do_not_drag_macro_average():
    logits = np.array([[2.0, 0, 0], [0, 2, 0]])
    labels = np.array([0, 1])  # class 2 absent from the data
    report = metrics.classification_report(logits, labels, ["a", "b", "c"])
    assert report["macro"]["recall"] == 1.0
    assert report["per_class"][2]["support"] == 0


def test_a_class_only_predicted_counts_in_the_macro_average_as_in_scikit_learn():
    from sklearn.metrics import precision_recall_fscore_support

    logits = np.array([[2.0, 0, 0], [0, 2, 0], [0, 2, 0], [0, 0, 2]])
    labels = np.array([0, 0, 0, 0])  # one class in the data; the model also says b and c
    report = metrics.classification_report(logits, labels, ["a", "b", "c"])
    expected = precision_recall_fscore_support(labels, logits.argmax(1), average="macro", zero_division=0)
    assert report["macro"]["precision"] == pytest.approx(expected[0]) == pytest.approx(1 / 3)
    assert report["macro"]["f1"] == pytest.approx(expected[2])


def test_ties_break_to_the_lower_class_index_everywhere():
    # bf16 logits tie; validation, eval and predict must name the same class for a tied image.
    import torch

    from resnetlab.predict import Classifier

    tied = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.5]])
    assert metrics.top_classes(tied, 3)[1].tolist() == [[1, 2, 4]]
    assert int(np.argmax(tied.numpy(), axis=1)[0]) == int(tied.argmax(1)[0]) == 1
    assert metrics.topk_accuracy(tied, [1], ks=(1,))[1] == 1.0
    clf = Classifier.__new__(Classifier)
    clf.classes = list("abcde")
    assert [p["label"] for p in clf.topk(tied.log_softmax(1), 3)[0]] == ["b", "c", "e"]


def test_format_report_lists_every_class(random_case):
    logits, labels = random_case
    text = metrics.format_report(metrics.classification_report(logits, labels, [f"class {i}" for i in range(7)]))
    for i in range(7):
        assert f"class {i}" in text
    assert "top-5" in text and "macro avg" in text and "weighted avg" in text


def test_table_stays_aligned_with_chinese_class_names():
    report = metrics.classification_report(np.eye(3), np.arange(3), ["纸板", "glass", "金属罐"])
    rows = metrics.format_report(report).splitlines()[4:7]
    columns = {metrics.display_width(row.split("1.000")[0]) for row in rows}
    assert len(columns) == 1  # the numbers start in the same terminal column on every row
