"""The daemon: wiring and the frame loop. Loads and self-tests the bundle (signed, when keys are trusted), scores
every frame of every station, spools each verdict on disk before publishing it, and talks to systemd (READY,
WATCHDOG, STATUS, STOPPING). Per-frame faults become `error` verdicts; the loop goes on. The watchdog is fed only
while every worker is alive, so a dead MQTT or sender thread makes systemd restart the daemon.

Each frame gets one identity: its verdict id is derived from the station, the frame's identity in its source and
its content, and the spool remembers which ids have a verdict, so a frame seen again after a crash is not given
a second verdict. Every verdict carries the station's persisted sequence number, so SCADA can see a gap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge import __version__
from edge.backends import Backend, create_backend
from edge.bundle import Bundle, load_bundle, self_test
from edge.config import CameraSource, DaemonConfig, FolderSource, MqttSource
from edge.errors import EdgeError, FrameError, SpoolError
from edge.imaging import decode_image, to_input
from edge.metrics import Metrics
from edge.notify import notify
from edge.postprocess import judge
from edge.publishers.mqtt import MqttPublisher, topic_for
from edge.queue import VerdictQueue
from edge.signing import Trust
from edge.sources.base import Frame, Source

__all__ = ["Daemon", "LoadedModel", "load_model"]

log = logging.getLogger("lineside")


@dataclass
class LoadedModel:
    bundle: Bundle
    backend: Backend
    selftest: dict[str, Any]


def load_model(bundle_dir: Path, device: str, cache_dir: Path, threads: int, trust: Trust | None = None) -> LoadedModel:
    """Verify signature (when keys are trusted) and hashes, build the backend (with warm-up) and pass the golden
    self-test, or raise BundleError."""
    bundle = load_bundle(bundle_dir, trust)
    backend = create_backend(bundle.runtime, bundle.artifact, device, cache_dir, threads)
    try:
        result = self_test(bundle, backend)
    except EdgeError:
        backend.close()
        raise
    return LoadedModel(bundle, backend, result)


def frame_id(frame: Frame) -> str:
    """The verdict id of a frame: the same frame (station, identity in its source, content) always gets the same."""
    if frame.data is not None:
        content = hashlib.sha256(frame.data).hexdigest()
    elif frame.rgb is not None:
        content = hashlib.sha256(np.ascontiguousarray(frame.rgb).tobytes()).hexdigest()
    else:
        content = hashlib.sha256((frame.error or "").encode()).hexdigest()
    h = hashlib.sha256(f"{frame.station}\0{frame.identity}\0{content}".encode()).digest()
    return str(uuid.UUID(bytes=h[:16], version=5))


class ReloadCommand(BaseModel):
    """`{"command": "reload", "id": "...", "bundle": "/opt/lineside/bundles/x"}` on <prefix>/<line>/set."""

    model_config = ConfigDict(extra="forbid")
    command: str = Field(pattern="^reload$")
    id: str = Field(min_length=1, max_length=128)
    bundle: str | None = Field(None, max_length=4096)


class Daemon:
    def __init__(self, cfg: DaemonConfig) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._reload_request: tuple[Path | None, str | None] = (None, None)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.trust = Trust.from_files(cfg.trust.keys, cfg.state_dir / "trust.json")
        self.model = load_model(cfg.bundle, cfg.backend.device, cfg.cache_dir, cfg.backend.threads, self.trust)
        self.trust.accept(self.model.bundle.version)
        self.metrics.selftest.set(1)
        log.info("bundle %s loaded: %s on %s (%s); self-test passed%s", self.model.bundle.digest,
                 self.model.bundle.manifest["model"]["name"], self.model.backend.info.runtime,
                 self.model.backend.info.device,
                 f"; signed by key {self.model.bundle.signed_by}" if self.model.bundle.signed_by else
                 " (unsigned: no trust.keys configured)")
        if self.model.backend.info.fallback:
            log.warning("backend fallback: %s", self.model.backend.info.fallback)
        self.queue = VerdictQueue(cfg.state_dir / "queue.sqlite", cfg.queue.max_items, cfg.queue.max_age_s)
        self.publisher = MqttPublisher(cfg.mqtt, self.queue)
        self.heatmap_dir = cfg.state_dir / "heatmaps"
        self._inflight_file = cfg.state_dir / "inflight.json"
        self._suspect = self._read_inflight()
        self.sources: list[Source] = [self._make_source(st) for st in cfg.stations]
        self.thresholds = {st.name: st.threshold for st in cfg.stations}
        self.result_topic = topic_for(cfg.mqtt, None, "set") + "/result"
        if cfg.commands.enabled:
            self.publisher.subscribe(topic_for(cfg.mqtt, None, "set"), self._on_command)
        self.last_error: str | None = None
        self.spool_problem: str | None = None
        self._status_sent: tuple[str, tuple[str, ...]] | None = None

    def _make_source(self, st: Any) -> Source:
        src = st.source
        if isinstance(src, FolderSource):
            from edge.sources.folder import FolderSource as Impl

            return Impl(st.name, src)
        if isinstance(src, CameraSource):
            from edge.sources.camera import CameraSource as Cam

            return Cam(st.name, src)
        if isinstance(src, MqttSource):
            from edge.sources.mqtt import MqttTriggerSource

            return MqttTriggerSource(st.name, src, self.publisher)
        raise EdgeError(f"station {st.name}: unknown source type {type(src).__name__}")

    # --- health and status ---------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why the daemon is not fully healthy; empty when it is."""
        out = list(dict.fromkeys(p for p in (self.publisher.alive(), self.publisher.problem, self.spool_problem,
                                             self.queue.incident, self.last_error) if p))
        if self.model.backend.info.fallback:
            out.append(f"backend fallback: {self.model.backend.info.fallback}")
        return out

    def status(self, state: str) -> dict[str, Any]:
        m = self.model
        problems = self.problems()
        if state == "online" and problems:
            state = "degraded"
        try:
            depth, dropped = self.queue.depth(), self.queue.dropped()
            refused, quarantined = self.queue.stat("refused"), self.queue.stat("quarantined")
        except SpoolError:
            depth = dropped = refused = quarantined = -1
        return {"state": state, "problems": problems, "ts": time.time(), "software_version": __version__,
                **m.bundle.describe(),
                "backend": {"runtime": m.backend.info.runtime, "version": m.backend.info.version,
                            "device": m.backend.info.device, "fallback": m.backend.info.fallback},
                "selftest": m.selftest, "queue_depth": depth, "dropped_verdicts": dropped,
                "refused_verdicts": refused, "quarantined_verdicts": quarantined,
                "sender": self.publisher.sender_state(),
                "last_error": self.last_error, "stations": [s.station for s in self.sources]}

    def _publish_status(self, force: bool = False) -> None:
        st = self.status("online")
        key = (st["state"], tuple(st["problems"]))
        if force or key != self._status_sent:
            if key != self._status_sent and st["problems"]:
                log.warning("status %s: %s", st["state"], "; ".join(st["problems"]))
            self._status_sent = key
            self.publisher.set_status(st)

    # --- commands and reload -------------------------------------------------------------------
    def _answer(self, cmd_id: str | None, result: str, reason: str | None = None) -> None:
        self.publisher.publish_now(self.result_topic, {"id": cmd_id, "result": result, "reason": reason,
                                                       "ts": time.time()})

    def _on_command(self, msg: Any, ack: Callable[[], None]) -> None:
        """Network thread: validate a remote command and queue the reload for the frame loop."""
        ack()
        cmd_id = None
        try:
            body = json.loads(msg.payload)
            cmd_id = str(body.get("id"))[:128] if isinstance(body, dict) and body.get("id") is not None else None
            cmd = ReloadCommand.model_validate(body)
        except ValidationError as err:
            e = err.errors()[0]
            reason = f"malformed command: {'.'.join(str(x) for x in e['loc']) or 'payload'}: {e['msg']}"
            log.warning("command on %s refused: %s", msg.topic, reason)
            self._answer(cmd_id, "refused", reason)
            return
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            reason = f"malformed command: not a JSON object ({str(err)[:120]})"
            log.warning("command on %s refused: %s", msg.topic, reason)
            self._answer(cmd_id, "refused", reason)
            return
        if msg.retain:
            log.warning("retained command %s on %s ignored (commands must not re-apply at every connect)",
                        cmd.id, msg.topic)
            self._answer(cmd.id, "refused", "retained commands are ignored; publish with retain=false")
            return
        if not self.trust.enforced:
            self._answer(cmd.id, "refused", "remote reload needs trust.keys in the daemon config (signed bundles)")
            return
        path: Path | None = None
        if cmd.bundle is not None:
            root = self.cfg.commands.bundle_dir
            p = Path(cmd.bundle)
            if root is None or not p.is_absolute() or not p.resolve().is_relative_to(root.resolve()):
                self._answer(cmd.id, "refused", f"bundle must be a folder inside commands.bundle_dir ({root})")
                return
            path = p.resolve()
        self._reload_request = (path, cmd.id)
        self._reload.set()
        self._answer(cmd.id, "accepted")

    def request_reload(self) -> None:
        self._reload_request = (None, None)
        self._reload.set()

    def _do_reload(self) -> None:
        path, cmd_id = self._reload_request
        path = path or self.cfg.bundle
        self._reload.clear()
        notify("WATCHDOG=1")
        try:
            new = load_model(path, self.cfg.backend.device, self.cfg.cache_dir, self.cfg.backend.threads, self.trust)
        except Exception as err:  # noqa: BLE001 - a bad bundle must never stop the inspection that is running
            reason = str(err) if isinstance(err, EdgeError) else f"{type(err).__name__}: {err}"
            self.last_error = f"bundle update refused, keeping {self.model.bundle.digest}: {reason}"
            log.error("%s", self.last_error)
            if cmd_id:
                self._answer(cmd_id, "failed", reason)
            self._publish_status(force=True)
            return
        old = self.model
        self.model = new
        self.trust.accept(new.bundle.version)
        old.backend.close()
        self.last_error = None
        log.info("bundle %s swapped in (was %s)", new.bundle.digest, old.bundle.digest)
        if cmd_id:
            self._answer(cmd_id, "applied", f"bundle {new.bundle.digest}")
        self._publish_status(force=True)

    # --- poison frames -------------------------------------------------------------------------
    def _read_inflight(self) -> tuple[str, int] | None:
        try:
            d = json.loads(self._inflight_file.read_text())
            return str(d["id"]), int(d["attempts"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _mark_inflight(self, fid: str, ref: str) -> int:
        """Note the frame being scored; returns how many starts it has been in flight at (1 = first try)."""
        attempts = self._suspect[1] + 1 if self._suspect and self._suspect[0] == fid else 1
        tmp = self._inflight_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"id": fid, "ref": ref, "attempts": attempts}))
            os.replace(tmp, self._inflight_file)
        except OSError:
            pass  # disk full: the spool write reports it; this note only guards against poison frames
        return attempts

    # --- scoring -----------------------------------------------------------------------------
    def score(self, frame: Frame, fid: str, attempts: int = 1) -> dict[str, Any]:
        """Score one frame into a verdict dict; any per-frame fault gives outcome `error`."""
        m = self.model
        t0 = time.perf_counter()
        lat: dict[str, float] = {}
        verdict: dict[str, Any] = {
            "id": fid, "seq": None, "station": frame.station, "line": self.cfg.mqtt.line, "frame": frame.ref,
            "correlation_id": frame.correlation_id, "captured_at": frame.t_capture,
            "model": m.bundle.manifest["model"]["name"], "model_version": m.bundle.manifest["model"]["version"],
            "bundle": m.bundle.digest, "outcome": "error", "score": None, "anomaly_area": None, "bbox": None,
            "heatmap": None, "error": None,
        }
        override = self.thresholds.get(frame.station)
        threshold = override if override is not None else m.bundle.threshold
        verdict["threshold"] = threshold
        try:
            if frame.error is not None:
                raise FrameError(f"{frame.ref}: {frame.error}")
            if attempts >= 2:
                raise FrameError(f"{frame.ref}: the daemon stopped while scoring this frame at {attempts - 1} "
                                 "earlier start(s) (decoder crash or hang); not scored again")
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
            verdict.update({"outcome": j.outcome, "score": round(j.score, 6), "anomaly_area": round(j.area_fraction, 6),
                            "bbox": j.bbox})
            if j.outcome == "ng" and self.cfg.heatmaps.enabled:
                try:
                    verdict["heatmap"] = self._save_heatmap(fid, rgb, pred.anomaly_map, threshold)
                except OSError as err:  # a full disk costs the overlay, not the verdict
                    log.warning("heatmap for %s not saved: %s", frame.ref, err)
        except (FrameError, EdgeError) as err:
            verdict["error"] = str(err)
        except (RuntimeError, ValueError, MemoryError) as err:  # a runtime failing on one frame must not stop the line
            verdict["error"] = f"scoring failed: {type(err).__name__}: {err}"
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

    def handle(self, frame: Frame) -> dict[str, Any] | None:
        """Score and spool one frame; None if it already had a verdict (seen again after a crash).

        Raises SpoolError (the frame is then offered again later) when the verdict cannot be written.
        """
        fid = frame_id(frame)
        try:
            if self.queue.seen(fid) is not None:
                log.info("frame %s already has verdict %s; not scored again", frame.ref, fid)
                if frame.done is not None:
                    frame.done("done")
                return None
        except SpoolError:
            if frame.done is not None:
                frame.done("retry")
            raise
        self.metrics.frames.labels(frame.station).inc()
        attempts = self._mark_inflight(fid, frame.ref)
        verdict = self.score(frame, fid, attempts)
        topic = frame.reply_topic or topic_for(self.cfg.mqtt, frame.station, "verdict")
        t0 = time.perf_counter()

        def build(seq: int) -> bytes:
            verdict["seq"] = seq
            return json.dumps(verdict, separators=(",", ":")).encode()

        try:
            seq = self.queue.record(fid, frame.station, topic, build)  # durable before the frame is released
        except SpoolError:
            if frame.done is not None:
                frame.done("retry")
            raise
        try:
            self._inflight_file.unlink(missing_ok=True)
        except OSError:
            pass
        self._suspect = None
        self.publisher.wake()
        self.metrics.latency.labels("publish").observe((time.perf_counter() - t0) * 1e3)
        if frame.done is not None:
            frame.done("failed" if verdict["outcome"] == "error" else "done")
        if seq is None:
            return None
        self.metrics.verdicts.labels(frame.station, verdict["outcome"]).inc()
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
            for i, f in enumerate(frames):
                try:
                    v = self.handle(f)
                except SpoolError as err:
                    if self.spool_problem != str(err):
                        log.error("%s; frames wait in their sources", err)
                    self.spool_problem = str(err)
                    for rest in frames[i + 1:]:
                        if rest.done is not None:
                            rest.done("retry")
                    self._publish_status()
                    self._stop.wait(1.0)
                    break
                self.spool_problem = None
                n += 1
                last_frame = time.monotonic()
                if self.publisher.alive() is None:
                    notify("WATCHDOG=1")  # fed from the frame loop: a hung runtime or camera stops the pings
                if v is not None and v["outcome"] == "error":
                    log.warning("frame %s: error verdict: %s", f.ref, v["error"])
                if self._stop.is_set():
                    for rest in frames[i + 1:]:
                        if rest.done is not None:
                            rest.done("retry")
                    break
            dead = self.publisher.alive()
            if dead is not None:
                # no more watchdog pings, and exit non-zero: systemd restarts us (Restart=on-failure) at once
                log.critical("%s; stopping so that systemd restarts the daemon (spooled verdicts are kept)", dead)
                self.shutdown(flush_s=0)
                return 1
            notify("WATCHDOG=1")
            now = time.monotonic()
            if now - last_gauges >= 1.0:  # a few SQLite queries: once a second, not on every loop pass
                last_gauges = now
                self._gauges()
                self._publish_status()
            if now - last_status > 30:
                last_status = now
                self._publish_status(force=True)  # keeps the retained queue_depth fresh
                problems = self.problems()
                notify(f"STATUS=scored {n} frames; broker "
                       f"{'connected' if self.publisher.is_connected else 'disconnected'}"
                       + (f"; DEGRADED: {'; '.join(problems)}" if problems else ""))
            if stop_after_idle_s is not None and now - last_frame > stop_after_idle_s:
                break
            if not frames:
                time.sleep(0.02)
        return self.shutdown()

    def _gauges(self) -> None:
        try:
            self.metrics.queue_depth.set(self.queue.depth())
            self.metrics.dropped.set(self.queue.dropped())
            self.metrics.refused.set(self.queue.stat("refused"))
            self.metrics.quarantined.set(self.queue.stat("quarantined"))
        except SpoolError as err:
            self.spool_problem = str(err)
        self.metrics.connected.set(1 if self.publisher.is_connected else 0)
        self.metrics.healthy.set(0 if self.problems() else 1)

    def shutdown(self, flush_s: float = 10.0) -> int:
        notify("STOPPING=1", "STATUS=stopping: flushing queued verdicts")
        if self.publisher.is_connected:
            try:
                self.publisher.flush(flush_s)
            except SpoolError as err:
                log.error("%s", err)
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
