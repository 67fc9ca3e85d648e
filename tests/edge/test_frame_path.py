"""The frame path on fakes (tests/edge/fakes.py): scoring one frame is a pure function of the frame and the
model, and the real Daemon wires it to the spool, the publishers and the station health. Fast: no bundle, broker
or runtime; test_daemon.py runs the same path against the real parts."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from edge.app import Daemon
from edge.config import DaemonConfig
from edge.contract import MAX_PIXELS_DEFAULT
from edge.scoring import POISON_AFTER, score_frame
from edge.sources.base import Frame
from fakes import FilesSource, MemoryPublisher, fake_model

BLACK = np.zeros((16, 16, 3), np.uint8)
WHITE = np.full((16, 16, 3), 255, np.uint8)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _daemon(tmp_path, sources, thresholds=None):
    """The real Daemon with a fake model (threshold 0.5), the given sources and a MemoryPublisher as `json`."""
    thresholds = thresholds or {}
    cfg = DaemonConfig(bundle=tmp_path / "bundle", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache",
                       metrics={"enabled": False},
                       stations=[{"name": s.station, "threshold": thresholds.get(s.station),
                                  "source": {"type": "folder", "path": str(tmp_path / "unused")}} for s in sources])
    return Daemon(cfg, model=fake_model(tmp_path), sources=sources, publishers={"json": MemoryPublisher})


def _run_once(d: Daemon) -> list:
    return [d.handle(f) for f in d.stations.poll()]


# --- scoring one frame --------------------------------------------------------------------------------------------
def test_scoring_is_a_pure_function_of_frame_and_model(tmp_path):
    model = fake_model(tmp_path)
    frame = Frame("s1", "a", "a", data=_png(BLACK))
    first, again = (score_frame(frame, model, 0.5, MAX_PIXELS_DEFAULT) for _ in range(2))
    assert (first.outcome, first.score, first.bbox) == (again.outcome, again.score, again.bbox) == ("ok", 0.0, None)
    # a bright corner of a 40x20 frame: ng, its box in the frame's own pixels (the map is 16x16)
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:10, 20:] = 255
    r = score_frame(Frame("s1", "b", "b", rgb=rgb), model, 0.5, MAX_PIXELS_DEFAULT)
    assert r.outcome == "ng" and r.score == 1.0 and r.threshold == 0.5
    x0, y0, x1, y1 = r.bbox
    assert (y0, x1) == (0, 40) and 16 <= x0 <= 22 and 8 <= y1 <= 12
    assert set(r.latency_ms) == {"decode_ms", "preprocess_ms", "inference_ms", "total_ms"}
    # the same frame judged against another threshold: the threshold is an input, nothing is remembered
    assert score_frame(Frame("s1", "b", "b", rgb=rgb), model, 1.5, MAX_PIXELS_DEFAULT).outcome == "ok"


def test_a_frame_that_was_not_inferred_is_never_ok(tmp_path):
    model = fake_model(tmp_path)
    cases = {"corrupt bytes": Frame("s1", "x", "x", data=b"\x89PNG\r\n\x1a\n garbage"),
             "empty file": Frame("s1", "e", "e", data=b""),
             "float camera frame": Frame("s1", "f", "f", rgb=WHITE.astype(np.float32)),
             "source already knew": Frame("s1", "s", "s", error="file larger than max_pixels")}
    for name, frame in cases.items():
        r = score_frame(frame, model, 0.5, MAX_PIXELS_DEFAULT)
        assert r.outcome == "error" and r.score is None and r.error, name
    assert "uint8" in score_frame(cases["float camera frame"], model, 0.5, MAX_PIXELS_DEFAULT).error
    assert model.backend.calls == 0  # none of them reached the runtime
    # a frame the daemon died on at every earlier start is not run again
    r = score_frame(Frame("s1", "p", "p", data=_png(WHITE)), model, 0.5, MAX_PIXELS_DEFAULT, POISON_AFTER + 1)
    assert r.outcome == "error" and "not scored again" in r.error and model.backend.calls == 0


# --- the daemon wired to fakes ------------------------------------------------------------------------------------
def test_daemon_gives_every_frame_one_verdict_in_sequence(tmp_path):
    src = FilesSource("s1", [_png(BLACK), _png(WHITE), b"not an image", BLACK])
    d = _daemon(tmp_path, [src])
    _run_once(d)
    (pub,) = d.publishers
    assert [v.outcome for v in pub.verdicts] == ["ok", "ng", "error", "ok"]
    assert [v.seq for v in pub.verdicts] == [1, 2, 3, 4]  # one gap-free sequence per station
    assert all(t == "lineside/line1/s1/verdict" for t in pub.topics)
    assert list(src.dispositions.values()) == ["done", "done", "failed", "done"]
    ng = pub.verdicts[1]
    assert ng.heatmap and (tmp_path / "state" / "heatmaps" / f"{ng.id}.png").is_file()
    assert pub.verdicts[2].score is None and pub.verdicts[2].error
    assert d.queue.depth() == 0  # every spooled verdict was delivered
    # the same frame delivered again (same identity and content): no second verdict, the sequence goes on
    src.offer(_png(WHITE), identity=pub.verdicts[1].frame)
    src.offer(_png(WHITE))
    assert _run_once(d)[0] is None
    assert [v.seq for v in pub.verdicts] == [1, 2, 3, 4, 5]
    d.shutdown(flush_s=0)
    assert pub.statuses[-1]["state"] == "stopped"


def test_each_station_is_judged_against_its_own_threshold(tmp_path):
    strict, lenient = FilesSource("a", [_png(WHITE)]), FilesSource("b", [_png(WHITE)])
    d = _daemon(tmp_path, [strict, lenient], thresholds={"b": 1.5})
    _run_once(d)
    by_station = {v.station: v for v in d.publishers[0].verdicts}
    assert (by_station["a"].outcome, by_station["a"].threshold) == ("ng", 0.5)  # the bundle's
    assert (by_station["b"].outcome, by_station["b"].threshold) == ("ok", 1.5)
    assert [v.seq for v in d.publishers[0].verdicts] == [1, 1]  # each station counts its own


def test_a_failing_source_marks_its_station_down_and_the_others_go_on(tmp_path):
    cam, files = FilesSource("cam"), FilesSource("files", [_png(BLACK)])
    cam.fail_with = "camera unplugged"
    d = _daemon(tmp_path, [cam, files])
    assert [v.outcome for v in _run_once(d)] == ["ok"]
    pub = d.publishers[0]
    assert pub.events == [("down", "cam")]
    st = d.status("online")
    assert st["state"] == "degraded" and "station cam down: station cam: camera unplugged" in st["problems"]
    cam.fail_with = None
    _run_once(d)
    assert pub.events == [("down", "cam"), ("up", "cam")] and d.status("online")["state"] == "online"
