from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.errors import FrameError
from edge.contract import decode_image, load_image
from training.data import load_mask, open_dataset
from training.errors import DatasetError
from training.synth import SynthSpec, write_synthetic


def _img(p: Path, value: int = 128, mode: str = "RGB", size: int = 20) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), value if mode != "RGB" else (value,) * 3).save(p)
    return p


def test_mvtec_layout(tmp_path):
    for i in range(5):
        _img(tmp_path / "train/good" / f"{i}.png")
    _img(tmp_path / "test/good/0.png")
    _img(tmp_path / "test/scratch/0.png", 10)
    _img(tmp_path / "ground_truth/scratch/0_mask.png", 255, "L")
    d = open_dataset(tmp_path)
    assert d.layout == "mvtec"
    assert len(d.train) + len(d.val) == 5 and len(d.val) >= 1
    assert [(s.label, s.kind) for s in d.test] == [(0, "good"), (1, "scratch")]
    assert d.test[1].masks[0].name == "0_mask.png"


def test_mvtec_missing_mask_names_the_file(tmp_path):
    for i in range(3):
        _img(tmp_path / "train/good" / f"{i}.png")
    _img(tmp_path / "test/crack/7.png")
    with pytest.raises(DatasetError, match="7_mask.png"):
        open_dataset(tmp_path)


def test_loco_merges_several_masks(tmp_path):
    for split in ("train/good", "validation/good", "test/good"):
        _img(tmp_path / split / "000.png")
    _img(tmp_path / "test/logical_anomalies/000.png")
    m = tmp_path / "ground_truth/logical_anomalies/000"
    a, b = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    a[:5, :5], b[-5:, -5:] = 255, 255
    m.mkdir(parents=True)
    Image.fromarray(a).save(m / "000.png")
    Image.fromarray(b).save(m / "001.png")
    d = open_dataset(tmp_path)
    assert d.layout == "loco"
    s = d.test[-1]
    assert s.kind == "logical" and len(s.masks) == 2
    mask = load_mask(s.masks, 20)
    assert mask.sum() == 50 and mask[0, 0] and mask[-1, -1]


@pytest.mark.parametrize("make", ["empty", "no_images", "train_without_good"])
def test_malformed_trees_are_refused(tmp_path, make):
    if make == "empty":
        root = tmp_path / "nothing"
    elif make == "no_images":
        root = tmp_path
        (tmp_path / "readme.txt").write_text("x")
    else:
        root = tmp_path
        _img(tmp_path / "train/bad/0.png")
    with pytest.raises(DatasetError):
        open_dataset(root)


def test_folder_layout_with_labelled_test(tmp_path):
    for i in range(4):
        _img(tmp_path / "good" / f"{i}.jpg")
    _img(tmp_path / "test/dent/0.bmp")
    d = open_dataset(tmp_path)
    assert d.layout == "folder" and d.test[0].label == 1 and d.test[0].kind == "dent"


def test_image_formats(tmp_path):
    arr16 = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 150)
    Image.fromarray(arr16).save(tmp_path / "a16.png")
    rgb = load_image(tmp_path / "a16.png")
    assert rgb.shape == (20, 20, 3) and rgb.dtype == np.uint8
    assert rgb[-1, -1, 0] == (399 * 150) // 257  # scaled by bit depth, not by the image's maximum
    _img(tmp_path / "g.tif", 77, "L")
    assert load_image(tmp_path / "g.tif")[0, 0].tolist() == [77, 77, 77]
    with pytest.raises(FrameError, match="empty"):
        decode_image(b"")
    with pytest.raises(FrameError):
        decode_image(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(FrameError, match="exceeds"):
        decode_image((tmp_path / "a16.png").read_bytes(), max_pixels=100)


def test_synth_is_deterministic_with_masks(tmp_path):
    spec = SynthSpec(size_px=64, n_train=2, n_val=1, n_test_good=1, n_structural=3, n_logical=4, seed=3)
    a, b = write_synthetic(tmp_path / "a", spec), write_synthetic(tmp_path / "b", spec)
    for p in sorted(a.rglob("*.png")):
        assert p.read_bytes() == (b / p.relative_to(a)).read_bytes()
    d = open_dataset(a)
    kinds = sorted({s.kind for s in d.test if s.label})
    assert kinds == ["logical", "structural"]
    assert all(load_mask(s.masks, 64).any() for s in d.test if s.label)
