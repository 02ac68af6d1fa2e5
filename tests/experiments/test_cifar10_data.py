"""CIFAR-10 reader: official pickle format from a tarball or folder, safe unpickling, download with md5, the image
folder the engine trains on, and the `cifar10` dataset name."""

from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.data import cifar10
from resnetlab.errors import ResnetlabError


@pytest.fixture
def http_server(cifar_tarball):
    """Serve the tarball's folder on 127.0.0.1 (a random free port)."""
    folder = cifar_tarball[0].parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_arrays(arrays: cifar10.Cifar10Arrays, expected: dict[str, np.ndarray]) -> None:
    assert arrays.classes == list(cifar10.CLASSES)
    assert arrays.train_images.shape == (100, 32, 32, 3) and arrays.train_images.dtype == np.uint8
    assert arrays.test_images.shape == (20, 32, 32, 3)
    np.testing.assert_array_equal(arrays.train_images, expected["train_images"])
    np.testing.assert_array_equal(arrays.train_labels, expected["train_labels"])
    np.testing.assert_array_equal(arrays.test_images, expected["test_images"])
    np.testing.assert_array_equal(arrays.test_labels, expected["test_labels"])


def test_fixture_uses_the_official_global_names(cifar_tarball):
    with tarfile.open(cifar_tarball[0]) as tar:
        data = tar.extractfile("cifar-10-batches-py/data_batch_1").read()
    assert data.startswith(b"\x80\x02")  # protocol 2, like the official files
    assert b"numpy.core.multiarray\n_reconstruct" in data


def test_reads_tarball_in_place(cifar_tarball):
    path, expected = cifar_tarball
    _check_arrays(cifar10.read_cifar10(path), expected)


def test_reads_extracted_folder_and_its_parent(cifar_tarball, tmp_path):
    path, expected = cifar_tarball
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path, filter="data")
    _check_arrays(cifar10.read_cifar10(tmp_path / "cifar-10-batches-py"), expected)
    _check_arrays(cifar10.read_cifar10(tmp_path), expected)


class _Exploit:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pickle_is_refused_before_running_anything(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": _Exploit(marker), b"labels": []}, protocol=protocol)
    with pytest.raises(cifar10.UnsafePickleError, match=r"refused to load (posix|os|nt)\.system"):
        cifar10.load_batch(payload, "evil_batch")
    assert not marker.exists()


def test_builtins_and_other_globals_are_refused():
    for obj in (eval, getattr, np.load):
        with pytest.raises(cifar10.UnsafePickleError, match="not a genuine CIFAR-10 batch"):
            cifar10.load_batch(pickle.dumps(obj, protocol=2), "batch")


def test_malicious_member_in_a_tarball_is_refused(cifar_tarball, tmp_path):
    src, _ = cifar_tarball
    with tarfile.open(src) as tar:
        tar.extractall(tmp_path, filter="data")
    marker = tmp_path / "pwned"
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(_Exploit(marker), protocol=2))
    with pytest.raises(cifar10.UnsafePickleError, match="data_batch_3"):
        cifar10.read_cifar10(tmp_path)
    assert not marker.exists()


def test_truncated_and_foreign_files_give_one_line_errors(cifar_tarball, tmp_path):
    with pytest.raises(ResnetlabError, match="not a readable CIFAR batch"):
        cifar10.load_batch(b"\x80\x02}q\x00(", "torn")
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(b"not a tarball")
    with pytest.raises(ResnetlabError, match="not a readable tarball"):
        cifar10.read_cifar10(bad)
    with pytest.raises(ResnetlabError, match="no such file or folder"):
        cifar10.read_cifar10(tmp_path / "missing")


def test_download_with_md5_then_image_folder(cifar_tarball, http_server, tmp_path, capsys):
    path, expected = cifar_tarball
    images = cifar10.prepare(tmp_path, url=f"{http_server}/{path.name}", md5=_md5(path))
    assert images == tmp_path / "images"
    assert _md5(tmp_path / cifar10.TARBALL) == _md5(path)
    assert not list(tmp_path.glob(".*.part"))  # no temp file left behind
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err  # the progress bar names the file

    assert sorted(p.name for p in (images / "train").iterdir()) == sorted(cifar10.CLASSES)
    assert len(list((images / "train").rglob("*.png"))) == 100
    assert len(list((images / "test").rglob("*.png"))) == 20
    # Pixels survive the round trip exactly (PNG is lossless) and land in their class folder.
    i = 7
    label = cifar10.CLASSES[expected["train_labels"][i]]
    png = np.asarray(Image.open(images / "train" / label / f"{i:05d}.png"))
    np.testing.assert_array_equal(png, expected["train_images"][i])

    # Second call: already there, no network needed.
    assert cifar10.prepare(tmp_path, url="http://127.0.0.1:9/nothing", md5="0" * 32) == images


def test_processes_preparing_at_once_write_the_folder_once(cifar_tarball, tmp_path, monkeypatch):
    # Two runs started together each wrote the image folder and deleted the other's underneath it. The lock is a file
    # lock, which two opens in one process contend for as two processes do: threads stand in for processes here.
    import shutil
    import time

    path, _ = cifar_tarball
    shutil.copy(path, tmp_path / cifar10.TARBALL)
    writes = []
    real = cifar10.materialize

    def slow(arrays, out):
        writes.append(out)
        time.sleep(0.5)  # long enough for the other to arrive while this one writes
        return real(arrays, out)

    monkeypatch.setattr(cifar10, "materialize", slow)
    results: list[Path] = []
    md5 = _md5(path)
    threads = [threading.Thread(target=lambda: results.append(cifar10.prepare(tmp_path, md5=md5))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [tmp_path / "images"] * 2 and len(writes) == 1
    assert len(list((tmp_path / "images" / "train").rglob("*.png"))) == 100


def test_wrong_md5_deletes_the_download(cifar_tarball, http_server, tmp_path):
    path, _ = cifar_tarball
    with pytest.raises(ResnetlabError, match="md5 is .* expected 0{32}"):
        cifar10.fetch(tmp_path, url=f"{http_server}/{path.name}", md5="0" * 32)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_says_where_to_put_the_file(tmp_path):
    # Port 9 (discard) on localhost: connection refused, like a machine without internet access.
    with pytest.raises(ResnetlabError) as err:
        cifar10.prepare(tmp_path, url="http://127.0.0.1:9/cifar-10-python.tar.gz")
    message = str(err.value)
    assert "could not download CIFAR-10" in message
    assert str(tmp_path / cifar10.TARBALL) in message and "\n" not in message
    with pytest.raises(ResnetlabError, match="CIFAR-10 not found: put cifar-10-python.tar.gz"):
        cifar10.prepare(tmp_path, allow_download=False)


def test_found_tarball_with_wrong_checksum_is_an_error(cifar_tarball, tmp_path):
    path, _ = cifar_tarball
    (tmp_path / cifar10.TARBALL).write_bytes(path.read_bytes())
    with pytest.raises(ResnetlabError, match="md5 is not the official"):
        cifar10.fetch(tmp_path)  # the official md5 is expected unless told otherwise
    assert cifar10.fetch(tmp_path, md5=_md5(path)) == tmp_path / cifar10.TARBALL


def test_dataset_name_resolves_through_the_cache(cifar_tarball, tmp_path, monkeypatch):
    from resnetlab.data.folder import make_splits

    path, _ = cifar_tarball
    monkeypatch.setenv(cifar10.CACHE_ENV, str(tmp_path))
    with tarfile.open(path) as tar:
        tar.extractall(tmp_path / "cifar10", filter="data")  # an extracted folder in the cache is used as is
    assert cifar10.dataset_name("cifar10") == "cifar10" and cifar10.dataset_name("CIFAR10") == "cifar10"
    assert cifar10.dataset_name(str(tmp_path)) is None
    root = cifar10.resolve_data_root("cifar10")
    assert root == tmp_path / "cifar10" / "images"

    splits = make_splits(root, val_fraction=0.1, seed=0)
    assert splits.classes == sorted(cifar10.CLASSES)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 20)


def test_existing_folder_named_like_a_dataset_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10").mkdir()
    assert cifar10.resolve_data_root("cifar10") == Path("cifar10")
    assert cifar10.dataset_name("cifar10") is None
