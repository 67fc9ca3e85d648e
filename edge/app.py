"""The daemon: wiring and the frame loop. Loads and self-tests the bundle, scores every frame of every
station, queues each verdict on disk before publishing it, and talks to systemd (READY, WATCHDOG, STATUS,
STOPPING). Per-frame faults become `error` verdicts; the loop goes on."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge import __version__
from edge.backends import Backend, create_backend
from edge.bundle import Bundle, load_bundle, self_test
from edge.config import CameraSource, DaemonConfig, FolderSource, MqttSource
from edge.errors import EdgeError, FrameError
from edge.imaging import decode_image, to_input
from edge.metrics import Metrics
from edge.notify import notify
from edge.postprocess import judge
from edge.publishers.mqtt import MqttPublisher, topic_for
from edge.queue import VerdictQueue
from edge.sources.base import Frame, Source

__all__ = ["Daemon", "LoadedModel", "load_model"]

log = logging.getLogger("lineside")


@dataclass
class LoadedModel:
    bundle: Bundle
    backend: Backend
    selftest: dict[str, Any]


def load_model(bundle_dir: Path, device: str, cache_dir: Path, threads: int) -> LoadedModel:
    """Verify hashes, build the backend (with warm-up) and pass the golden self-test, or raise BundleError."""
    bundle = load_bundle(bundle_dir)
    backend = create_backend(bundle.runtime, bundle.artifact, device, cache_dir, threads)
    result = self_test(bundle, backend)
    return LoadedModel(bundle, backend, result)


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._reload_path: Path | None = None
        self.model = load_model(cfg.bundle, cfg.backend.device, cfg.cache_dir, cfg.backend.threads)
        self.metrics.selftest.set(1)
        log.info("bundle %s loaded: %s on %s (%s); self-test passed", self.model.bundle.digest,
                 self.model.bundle.manifest["model"]["name"], self.model.backend.info.runtime, self.model.backend.info.device)
        if self.model.backend.info.fallback:
            log.warning("backend fallback: %s", self.model.backend.info.fallback)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.queue = VerdictQueue(cfg.state_dir / "queue.sqlite", cfg.queue.max_items, cfg.queue.max_age_s)
        self.publisher = MqttPublisher(cfg.mqtt, self.queue)
        self.heatmap_dir = cfg.state_dir / "heatmaps"
        self.sources: list[Source] = [self._make_source(st) for st in cfg.stations]
        self.thresholds = {st.name: st.threshold for st in cfg.stations}
        self.publisher.subscribe(topic_for(cfg.mqtt, None, "set"), self._on_command)
        self.last_error: str | None = None

    def _make_source(self, st: Any) -> Source:
        src = st.source
        if isinstance(src, FolderSource):
            from edge.sources.folder import FolderSource as Impl

            return Impl(st.name, src)
        if isinstance(src, CameraSource):
            from edge.sources.camera import CameraSource as Cam

            return Cam(st.name, src)
        assert isinstance(src, MqttSource)
        from edge.sources.mqtt import MqttTriggerSource

        return MqttTriggerSource(st.name, src, self.publisher)

    # --- status ------------------------------------------------------------------------------
    def status(self, state: str) -> dict[str, Any]:
        m = self.model
        return {"state": state, "ts": time.time(), "version": __version__, **m.bundle.describe(),
                "backend": {"runtime": m.backend.info.runtime, "version": m.backend.info.version,
                            "device": m.backend.info.device, "fallback": m.backend.info.fallback},
                "selftest": m.selftest, "queue_depth": self.queue.depth(), "dropped_verdicts": self.queue.dropped(),
                "last_error": self.last_error, "stations": [s.station for s in self.sources]}

    # --- commands and reload -------------------------------------------------------------------
    def _on_command(self, topic: str, payload: bytes, props: Any) -> None:
        try:
            cmd = json.loads(payload)
        except json.JSONDecodeError:
            log.warning("ignored command on %s: not JSON", topic)
            return
        if isinstance(cmd, dict) and cmd.get("command") == "reload":
            self._reload_path = Path(cmd["bundle"]) if cmd.get("bundle") else None
            self._reload.set()

    def request_reload(self) -> None:
        self._reload_path = None
        self._reload.set()

    def _do_reload(self) -> None:
        path = self._reload_path or self.cfg.bundle
        self._reload.clear()
        try:
            new = load_model(path, self.cfg.backend.device, self.cfg.cache_dir, self.cfg.backend.threads)
        except EdgeError as err:
            self.last_error = f"bundle update refused, keeping {self.model.bundle.digest}: {err}"
            log.error("%s", self.last_error)
            self.publisher.set_status(self.status("running"))
            return
        old = self.model
        self.model = new
        old.backend.close()
        self.last_error = None
        log.info("bundle %s swapped in (was %s)", new.bundle.digest, old.bundle.digest)
        self.publisher.set_status(self.status("running"))

    # --- scoring -----------------------------------------------------------------------------
    def score(self, frame: Frame) -> dict[str, Any]:
        """Score one frame into a verdict dict; any per-frame fault gives outcome `error`."""
        m = self.model
        t0 = time.perf_counter()
        lat: dict[str, float] = {}
        verdict: dict[str, Any] = {
            "id": str(uuid.uuid4()), "station": frame.station, "line": self.cfg.mqtt.line, "frame": frame.ref,
            "correlation_id": frame.correlation_id, "captured_at": frame.t_capture,
            "model": m.bundle.manifest["model"]["name"], "model_version": m.bundle.manifest["model"]["version"],
            "bundle": m.bundle.digest,
        }
        override = self.thresholds.get(frame.station)
        threshold = override if override is not None else m.bundle.threshold
        try:
            if frame.rgb is not None:
                rgb = frame.rgb
                if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                    raise FrameError(f"camera frame must be uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
            else:
                rgb = decode_image(frame.data or b"", frame.ref, self.cfg.max_pixels, m.bundle.size_px)
            t1 = time.perf_counter()
            x = to_input(rgb, m.bundle.size_px)
            t2 = time.perf_counter()
            pred = m.bundle.affine.apply(m.backend.infer(x))
            t3 = time.perf_counter()
            j = judge(pred, threshold)
            lat = {"decode_ms": (t1 - t0) * 1e3, "preprocess_ms": (t2 - t1) * 1e3, "inference_ms": (t3 - t2) * 1e3}
            verdict.update({"outcome": j.outcome, "score": round(j.score, 6), "threshold": threshold,
                            "anomaly_area": round(j.area_fraction, 6), "bbox": j.bbox, "error": None})
            if j.outcome == "ng" and self.cfg.heatmaps.enabled:
                verdict["heatmap"] = self._save_heatmap(verdict["id"], rgb, pred.anomaly_map, threshold)
        except (FrameError, EdgeError) as err:
            verdict.update({"outcome": "error", "score": None, "threshold": threshold, "error": str(err)})
        except (RuntimeError, ValueError, MemoryError) as err:  # a runtime failing on one frame must not stop the line
            verdict.update({"outcome": "error", "score": None, "threshold": threshold,
                            "error": f"scoring failed: {type(err).__name__}: {err}"})
        lat["total_ms"] = (time.perf_counter() - t0) * 1e3
        verdict["latency"] = {k: round(v, 3) for k, v in lat.items()}
        verdict["scored_at"] = time.time()
        for stage, v in lat.items():
            self.metrics.latency.labels(stage.removesuffix("_ms")).observe(v)
        return verdict

    def _save_heatmap(self, vid: str, rgb: np.ndarray, amap: np.ndarray, threshold: float) -> str:
        from PIL import Image

        self.heatmap_dir.mkdir(parents=True, exist_ok=True)
        h, w = rgb.shape[:2]
        norm = np.clip(amap / max(threshold * 2, 1e-6), 0, 1)
        heat = Image.fromarray((norm * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        red = np.zeros((h, w, 3), np.uint8)
        red[..., 0] = np.asarray(heat)
        alpha = (np.asarray(heat, dtype=np.float32)[..., None] / 255.0) * 0.6
        over = (rgb * (1 - alpha) + red * alpha).astype(np.uint8)
        path = self.heatmap_dir / f"{vid}.png"
        Image.fromarray(over).save(path)
        files = sorted(self.heatmap_dir.glob("*.png"), key=lambda p: p.stat().st_mtime)
        for old in files[: max(0, len(files) - self.cfg.heatmaps.max_files)]:
            old.unlink(missing_ok=True)
        return str(path)

    def handle(self, frame: Frame) -> dict[str, Any]:
        self.metrics.frames.labels(frame.station).inc()
        verdict = self.score(frame)
        topic = frame.reply_topic or topic_for(self.cfg.mqtt, frame.station, "verdict")
        t0 = time.perf_counter()
        self.publisher.publish(topic, verdict)  # durable on disk before the frame is released
        self.metrics.latency.labels("publish").observe((time.perf_counter() - t0) * 1e3)
        self.metrics.verdicts.labels(frame.station, verdict["outcome"]).inc()
        if frame.done is not None:
            frame.done(verdict["outcome"] != "error")
        return verdict

    # --- main loop ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, stop_after_idle_s: float | None = None) -> int:
        """Run until stopped (SIGTERM/SIGINT) or, for tests and demos, after stop_after_idle_s without frames."""
        if self.cfg.metrics.enabled:
            port = self.metrics.serve(self.cfg.metrics.host, self.cfg.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, port)
        self.publisher.set_status(self.status("online"))
        self.publisher.start()
        notify("READY=1", f"STATUS=ready: {self.model.bundle.describe()['model']} on {self.model.backend.info.device}")
        last_frame = time.monotonic()
        last_status = 0.0
        last_gauges = 0.0
        n = 0
        while not self._stop.is_set():
            if self._reload.is_set():
                self._do_reload()
            frames = [f for s in self.sources for f in s.poll()]
            for f in frames:
                v = self.handle(f)
                n += 1
                last_frame = time.monotonic()
                # the watchdog is fed from the frame loop itself: a hung runtime or camera stops the pings
                notify("WATCHDOG=1")
                if v["outcome"] == "error":
                    log.warning("frame %s: error verdict: %s", f.ref, v["error"])
                if self._stop.is_set():
                    break
            notify("WATCHDOG=1")
            now = time.monotonic()
            if now - last_gauges >= 1.0:  # two SQLite queries: once a second, not on every loop pass
                last_gauges = now
                self.metrics.queue_depth.set(self.queue.depth())
                self.metrics.dropped.set(self.queue.dropped())
                self.metrics.connected.set(1 if self.publisher.is_connected else 0)
            if now - last_status > 10:
                last_status = now
                notify(f"STATUS=scored {n} frames; queue {self.queue.depth()}; broker "
                       f"{'connected' if self.publisher.is_connected else 'disconnected'}")
            if stop_after_idle_s is not None and now - last_frame > stop_after_idle_s:
                break
            if not frames:
                time.sleep(0.02)
        return self.shutdown()

    def shutdown(self, flush_s: float = 10.0) -> int:
        notify("STOPPING=1", "STATUS=stopping: flushing queued verdicts")
        if self.publisher.is_connected:
            self.publisher.flush(flush_s)
        self.publisher.close(self.status("stopped"))
        for s in self.sources:
            s.close()
        self.model.backend.close()
        self.queue.close()
        return 0

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
