"""The daemon: wiring and the frame loop. Loads and self-tests the bundle (signed, when keys are trusted), scores
every frame of every station, spools each verdict on disk before publishing it, and talks to systemd (READY,
WATCHDOG, STATUS, STOPPING). Per-frame faults become `error` verdicts; the loop goes on. The watchdog is fed only
while every worker is alive, so a dead MQTT or sender thread makes systemd restart the daemon.

Each frame gets one identity: its verdict id is derived from the station, the frame's identity in its source and
its content, and the spool remembers which ids have a verdict, so a frame seen again after a crash is not given
a second verdict. Every verdict carries the station's persisted sequence number, so SCADA can see a gap.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge import __version__
from edge.commands import Commands
from edge.config import CameraSource, DaemonConfig, FolderSource, MqttSource, SparkplugConfig
from edge.errors import EdgeError, SpoolError
from edge.heatmaps import save_overlay
from edge.metrics import Metrics
from edge.notify import notify
from edge.poison import PoisonGuard
from edge.publishers import REGISTRY, Publisher
from edge.connection import MqttConnection, default_client_id, topic_for
from edge.queue import VerdictQueue
from edge.scoring import LoadedModel, Scored, frame_id, load_model, score_frame
from edge.signing import Trust
from edge.sources.base import Frame, Source
from edge.stations import StationPoller
from edge.verdict import Verdict, iso_utc
from edge.verdict_builder import build_verdict

__all__ = ["Daemon", "LoadedModel", "load_model", "frame_id"]

log = logging.getLogger("lineside")


class Daemon:
    """Wires the sources, scoring, publishers and health, and runs the frame loop."""

    def __init__(self, cfg: DaemonConfig, *, model: LoadedModel | None = None,
                 sources: list[Source] | None = None, publishers: Mapping[str, type[Publisher]] = REGISTRY) -> None:
        """Everything comes from cfg: the bundle it names (verified and self-tested), a source per station and the
        publisher registered for each configured type. Unit tests hand in fakes instead (a loaded model, the
        stations' sources, publisher classes by type: tests/edge/fakes.py); nothing else changes."""
        self.cfg = cfg
        self._publisher_classes = publishers
        self.metrics = Metrics()
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._reload_request: tuple[Path | None, str | None] = (None, None)
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self.trust = Trust.from_files(cfg.trust.keys, cfg.state_dir / "trust.json")
        self.model = model if model is not None else load_model(cfg.bundle, cfg.backend.device, cfg.cache_dir,
                                                                cfg.backend.threads, self.trust)
        self.trust.accept(self.model.bundle.version)
        self.metrics.selftest.set(1)
        log.info("bundle %s loaded: %s on %s (%s); self-test passed%s", self.model.bundle.digest,
                 self.model.bundle.manifest.model.name, self.model.backend.info.runtime,
                 self.model.backend.info.device,
                 f"; signed by key {self.model.bundle.signed_by}" if self.model.bundle.signed_by else
                 " (unsigned: no trust.keys configured)")
        if self.model.backend.info.fallback:
            log.warning("backend fallback: %s", self.model.backend.info.fallback)
        self.queue = VerdictQueue(cfg.state_dir / "queue.sqlite", cfg.queue.max_items, cfg.queue.max_age_s,
                                  consumers=[p.type for p in cfg.publishers])
        # the daemon's own connection: status (its will says offline), commands, triggers, JSON verdicts
        self.conn = MqttConnection(cfg.mqtt, "mqtt")
        self.status_topic = topic_for(cfg.mqtt, None, "status")
        self.conn.will(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        self._status: dict[str, Any] = {"state": "starting"}
        self.conn.on_connect(lambda: self.conn.publish(self.status_topic, json.dumps(self._status), retain=True))
        self.connections = [self.conn]
        self.publishers: list[Publisher] = [self._make_publisher(p) for p in cfg.publishers]
        self.heatmap_dir = cfg.state_dir / "heatmaps"
        self.poison = PoisonGuard(cfg.state_dir / "inflight.json")
        self.sources: list[Source] = (sources if sources is not None
                                      else [self._make_source(st) for st in cfg.stations])
        self.stations = StationPoller(self.sources, self.publishers)
        self.thresholds = {st.name: st.threshold for st in cfg.stations}
        self.result_topic = topic_for(cfg.mqtt, None, "set") + "/result"
        self.commands = Commands(cfg.commands.bundle_dir, lambda: self.trust.enforced, self._queue_reload,
                                 lambda body: self.conn.publish(self.result_topic, json.dumps(body)))
        if cfg.commands.enabled:
            self.conn.subscribe(topic_for(cfg.mqtt, None, "set"), self.commands.on_message)
        self.last_error: str | None = None
        self.spool_problem: str | None = None
        self._status_sent: tuple[str, tuple[str, ...]] | None = None

    def _make_publisher(self, pcfg: Any) -> Publisher:
        cls = self._publisher_classes[pcfg.type]
        if isinstance(pcfg, SparkplugConfig):
            mcfg = pcfg.broker or self.cfg.mqtt
            cid = pcfg.broker.client_id if pcfg.broker and pcfg.broker.client_id else (
                f"{self.cfg.mqtt.client_id or default_client_id(self.cfg.mqtt)}-spb")
            conn = MqttConnection(mcfg, "sparkplug", client_id=cid, persistent=False)
            self.connections.append(conn)
            return cls("sparkplug", self.queue, conn, pcfg, [st.name for st in self.cfg.stations],  # type: ignore[call-arg]
                       self.cfg.state_dir)
        return cls(pcfg.type, self.queue, self.conn)

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

            return MqttTriggerSource(st.name, src, self.conn, self.status_topic.rsplit("/", 1)[0] + "/")
        raise EdgeError(f"station {st.name}: unknown source type {type(src).__name__}")

    # --- health and status ---------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Why the daemon is not fully healthy; empty when it is."""
        found = [self._dead(), *(p.problem for p in self.publishers), self.spool_problem, self.queue.incident,
                 self.last_error, *self.stations.problems()]
        if self.model.backend.info.fallback:
            found.append(f"backend fallback: {self.model.backend.info.fallback}")
        return list(dict.fromkeys(p for p in found if p))

    def _dead(self) -> str | None:
        """Which worker thread died or stalled, if any."""
        for w in (*self.connections, *self.publishers):
            dead = w.alive()
            if dead:
                return dead
        return None

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
        return {"state": state, "problems": problems, "ts": iso_utc(time.time()), "software_version": __version__,
                **m.bundle.describe(),
                "backend": {"runtime": m.backend.info.runtime, "version": m.backend.info.version,
                            "device": m.backend.info.device, "fallback": m.backend.info.fallback},
                "selftest": m.selftest, "queue_depth": depth, "dropped_verdicts": dropped,
                "refused_verdicts": refused, "quarantined_verdicts": quarantined,
                "publishers": {p.name: p.sender_state() for p in self.publishers},
                "brokers": {c.name: {"connected": c.is_connected, "server": "%s:%d" % c.server,
                                     "error": c.last_connect_error} for c in self.connections},
                "last_error": self.last_error, "stations": [s.station for s in self.sources]}

    def _set_status(self, status: dict[str, Any]) -> None:
        """The retained status on <prefix>/<line>/status, mirrored by every publisher in its own protocol."""
        self._status = status
        self.conn.publish(self.status_topic, json.dumps(status), retain=True)
        for p in self.publishers:
            p.set_status(status)

    def _publish_status(self, force: bool = False) -> None:
        st = self.status("online")
        key = (st["state"], tuple(st["problems"]))
        if force or key != self._status_sent:
            if key != self._status_sent and st["problems"]:
                log.warning("status %s: %s", st["state"], "; ".join(st["problems"]))
            self._status_sent = key
            self._set_status(st)

    # --- commands and reload -------------------------------------------------------------------
    def _queue_reload(self, path: Path | None, cmd_id: str | None) -> None:
        self._reload_request = (path, cmd_id)
        self._reload.set()

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
                self.commands.answer(cmd_id, "failed", reason)
            self._publish_status(force=True)
            return
        old = self.model
        self.model = new
        self.trust.accept(new.bundle.version)
        old.backend.close()
        self.last_error = None
        log.info("bundle %s swapped in (was %s)", new.bundle.digest, old.bundle.digest)
        if cmd_id:
            self.commands.answer(cmd_id, "applied", f"bundle {new.bundle.digest}")
        self._publish_status(force=True)

    # --- scoring -----------------------------------------------------------------------------
    def score(self, frame: Frame, fid: str, attempts: int = 1) -> Scored:
        """Score one frame (any per-frame fault gives outcome `error`) and save the overlay of an ng frame."""
        override = self.thresholds.get(frame.station)
        threshold = override if override is not None else self.model.bundle.threshold
        r = score_frame(frame, self.model, threshold, self.cfg.max_pixels, attempts)
        for stage, v in r.latency_ms.items():
            self.metrics.latency.labels(stage.removesuffix("_ms")).observe(v)
        return r

    def handle(self, frame: Frame) -> Verdict | None:
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
        attempts = self.poison.begin(fid, frame.ref)
        r = self.score(frame, fid, attempts)
        heatmap = None
        if r.outcome == "ng" and self.cfg.heatmaps.enabled and r.rgb is not None and r.anomaly_map is not None:
            try:
                heatmap = save_overlay(self.heatmap_dir, fid, r.rgb, r.anomaly_map, r.threshold,
                                       self.cfg.heatmaps.max_files)
            except OSError as err:  # a full disk costs the overlay, not the verdict
                log.warning("heatmap for %s not saved: %s", frame.ref, err)
        verdict = build_verdict(frame, fid, r, self.model.bundle, self.cfg.mqtt.line, heatmap)
        topic = frame.reply_topic or topic_for(self.cfg.mqtt, frame.station, "verdict")
        t0 = time.perf_counter()

        def build(seq: int) -> bytes:
            verdict.seq = seq
            return verdict.to_bytes()

        try:
            seq = self.queue.record(fid, frame.station, topic, build)  # durable before the frame is released
        except SpoolError:
            if frame.done is not None:
                frame.done("retry")
            raise
        self.poison.end()
        for p in self.publishers:
            p.wake()
        self.metrics.latency.labels("publish").observe((time.perf_counter() - t0) * 1e3)
        if frame.done is not None:
            frame.done("failed" if verdict.outcome == "error" else "done")
        if seq is None:
            return None
        self.metrics.verdicts.labels(frame.station, verdict.outcome).inc()
        return verdict

    # --- main loop ---------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self, stop_after_idle_s: float | None = None) -> int:
        """Run until stopped (SIGTERM/SIGINT) or, for tests and demos, after stop_after_idle_s without frames."""
        if self.cfg.metrics.enabled:
            port = self.metrics.serve(self.cfg.metrics.host, self.cfg.metrics.port)
            log.info("metrics on http://%s:%d/metrics", self.cfg.metrics.host, port)
        self._set_status(self.status("online"))
        for p in self.publishers:
            p.start()
        for c in self.connections:
            c.start()
        notify("READY=1", f"STATUS=ready: {self.model.bundle.describe()['model']} on {self.model.backend.info.device}")
        last_frame = time.monotonic()
        last_status = 0.0
        last_gauges = 0.0
        n = 0
        while not self._stop.is_set():
            if self._reload.is_set():
                self._do_reload()
            frames = self.stations.poll()
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
                if self._dead() is None:
                    notify("WATCHDOG=1")  # fed from the frame loop: a hung runtime or camera stops the pings
                if v is not None and v.outcome == "error":
                    log.warning("frame %s: error verdict: %s", f.ref, v.error)
                if self._stop.is_set():
                    for rest in frames[i + 1:]:
                        if rest.done is not None:
                            rest.done("retry")
                    break
            dead = self._dead()
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
                       f"{'connected' if self.conn.is_connected else 'disconnected'}"
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
        self.metrics.connected.set(1 if self.conn.is_connected else 0)
        self.metrics.healthy.set(0 if self.problems() else 1)

    def shutdown(self, flush_s: float = 10.0) -> int:
        notify("STOPPING=1", "STATUS=stopping: flushing queued verdicts")
        end = time.monotonic() + flush_s
        for p in self.publishers:
            if p.conn.is_connected:
                try:
                    p.flush(max(0.0, end - time.monotonic()))
                except SpoolError as err:
                    log.error("%s", err)
        final = self.status("stopped")
        for p in self.publishers:
            p.set_status(final)
            p.stop()
        for c in self.connections:
            last = [m for p in self.publishers if p.conn is c for m in p.closing_messages()]
            if c is self.conn:
                last.append((self.status_topic, json.dumps(final), True))  # clean stop: the will is not sent
            c.close(last)
        for s in self.sources:
            s.close()
        self.model.backend.close()
        self.queue.close()
        return 0

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
