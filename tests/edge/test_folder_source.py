"""The folder source takes a frame when it is complete: at once when a PNG/JPEG ends with its end marker, after a
stable size for formats without one, and never half-written (a PNG written in two parts was lost before)."""

import io
import time

import numpy as np
from PIL import Image

from edge.config import FolderSource as FolderConfig
from edge.sources.folder import FolderSource


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def _source(tmp_path, **kw):
    (tmp_path / "in").mkdir()
    return FolderSource("s1", FolderConfig(path=tmp_path / "in", settle_s=0.5, incomplete_wait_s=30, **kw))


def test_a_png_written_in_two_parts_is_taken_whole_and_only_then(tmp_path):
    src = _source(tmp_path)
    png = _encoded("PNG")
    f = tmp_path / "in" / "part.png"
    f.write_bytes(png[: len(png) // 2])
    assert src.poll() == []
    time.sleep(0.7)  # longer than settle_s: a stable size alone must not make a PNG without IEND complete
    assert src.poll() == []
    with f.open("ab") as fh:
        fh.write(png[len(png) // 2:])
    frames = src.poll()
    assert len(frames) == 1 and frames[0].data == png  # taken at once: its end marker is there


def test_a_complete_jpeg_is_taken_at_once_and_a_tiff_after_a_stable_size(tmp_path):
    src = _source(tmp_path)
    (tmp_path / "in" / "a.jpg").write_bytes(_encoded("JPEG"))
    (tmp_path / "in" / "b.tif").write_bytes(_encoded("TIFF"))
    first = src.poll()
    assert [p.ref.rsplit("/", 1)[1] for p in first] == ["a.jpg"]  # no settle wait for a finished JPEG
    time.sleep(0.6)
    assert [p.ref.rsplit("/", 1)[1] for p in src.poll()] == ["b.tif"]
