from __future__ import annotations

import io
import sys
import tarfile
from pathlib import Path

import pytest

from edge_client.data import load_image_folder, load_image_tar
from edge_client.errors import DataError


@pytest.fixture
def pil():
    """``PIL.Image``; tests that draw images skip where Pillow is absent (board env)."""
    return pytest.importorskip("PIL.Image")


def _png(pil, path: Path, color: tuple[int, int, int], size: tuple[int, int] = (4, 3)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.new("RGB", size, color).save(path)


def test_image_folder_sorted_classes_and_rgb(pil, tmp_path):
    _png(pil, tmp_path / "dog" / "b.png", (0, 255, 0))
    _png(pil, tmp_path / "cat" / "a.png", (255, 0, 0))
    _png(pil, tmp_path / "cat" / "b.PNG", (0, 0, 255))
    (tmp_path / "cat" / "notes.txt").write_text("ignored")

    ds = load_image_folder(tmp_path)

    assert ds.label_names == ("cat", "dog")
    assert ds.y.tolist() == [0, 0, 1]
    assert ds.x.shape == (3, 3, 4, 3)  # (N, H, W, C): width 4, height 3
    assert ds.x[0, 0, 0].tolist() == [255, 0, 0]
    assert ds.x[2, 0, 0].tolist() == [0, 255, 0]


def test_image_folder_grayscale_by_argument_and_by_guess(pil, tmp_path):
    (tmp_path / "a").mkdir()
    pil.new("L", (2, 2), 77).save(tmp_path / "a" / "x.png")

    guessed = load_image_folder(tmp_path)
    forced = load_image_folder(tmp_path, channels=3)

    assert guessed.x.shape == (1, 2, 2, 1)
    assert guessed.x.ravel().tolist() == [77] * 4
    assert forced.x.shape == (1, 2, 2, 3)


def test_image_folder_mismatched_size_names_the_file(pil, tmp_path):
    _png(pil, tmp_path / "a" / "1.png", (1, 2, 3), size=(4, 4))
    _png(pil, tmp_path / "a" / "2.png", (1, 2, 3), size=(5, 4))

    with pytest.raises(DataError, match=r"2\.png is 5x4 but .*1\.png is 4x4"):
        load_image_folder(tmp_path)


def test_image_folder_missing_or_empty(tmp_path):
    (tmp_path / "empty_class").mkdir()

    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "missing")
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path)


def test_corrupt_image_names_the_file(pil, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.jpg").write_bytes(b"not a jpeg")

    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg"):
        load_image_folder(tmp_path, channels=3)


def test_missing_pillow_says_how_to_install(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    monkeypatch.setitem(sys.modules, "PIL", None)

    with pytest.raises(DataError, match=r"pip install pillow.*images"):
        load_image_folder(tmp_path)


def make_jpeg_tar(pil, path: Path, classes: dict[str, int], splits=("train", "test")) -> Path:
    """A small tar.gz with the CIFAR-10 JPEG layout: cifar10/<split>/<class>/NNNN.jpg."""
    with tarfile.open(path, "w:gz") as tar:
        for split in splits:
            for c, (cls, n) in enumerate(sorted(classes.items())):
                for i in range(n):
                    buf = io.BytesIO()
                    pil.new("RGB", (32, 32), (20 * c, 100, 200)).save(buf, "JPEG", quality=95)
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_image_tar_decodes_every_split_from_the_stream(pil, tmp_path):
    path = make_jpeg_tar(pil, tmp_path / "small.tar.gz", {"bird": 2, "airplane": 3})

    out = load_image_tar(path)

    assert sorted(out) == ["test", "train"]
    train = out["train"]
    assert train.label_names == ("airplane", "bird")
    assert train.y.tolist() == [0, 0, 0, 1, 1]
    assert train.x.shape == (5, 32, 32, 3)
    assert abs(int(train.x[3, 5, 5, 0]) - 20) <= 3  # JPEG is lossy


def test_image_tar_truncated_is_a_data_error(pil, tmp_path):
    path = make_jpeg_tar(pil, tmp_path / "small.tar.gz", {"a": 20})
    path.write_bytes(path.read_bytes()[:-200])

    with pytest.raises(DataError, match="truncated or corrupt"):
        load_image_tar(path)
