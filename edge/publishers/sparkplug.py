"""Sparkplug B 3.0 edge node: the box is an edge node, each station a device.

Topics (namespace spBv1.0): NBIRTH/NDATA/NDEATH/NCMD on `spBv1.0/<group>/<type>/<edge_node>`, DBIRTH/DDATA on
`spBv1.0/<group>/<type>/<edge_node>/<station>`. Session rules followed here:
- the NDEATH is the MQTT will, carrying `bdSeq`; bdSeq is persisted and goes up by one for every connection
  attempt, and the NBIRTH of that connection carries the same value;
- NBIRTH has seq 0; every later message of the session (DBIRTH, NDATA, DDATA) takes the next seq, wrapping at 255;
- every metric is named and given an alias in a birth; DDATA carries aliases only;
- NCMD `Node Control/Rebirth` = true -> a full rebirth (NBIRTH + every DBIRTH, seq back to 0, same bdSeq);
- with `primary_host_id` set, nothing is published until that host's STATE (`spBv1.0/STATE/<id>`) says online;
  while it is offline verdicts stay in the spool; when it is back, the node re-births;
- verdicts spooled before the current birth (broker away, host offline, daemon down) are sent after the births
  in spool order with `is_historical` = true and the time they were made, never as live values.

The connection is the edge node's own (clean session, will = NDEATH), never shared with the JSON publisher.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge.config import SparkplugConfig
from edge.publishers.base import Publisher, register
from edge.connection import MqttConnection
from edge.publishers.sparkplug_pb import DataType, Payload
from edge.queue import Pending, VerdictQueue
from edge.verdict import Verdict

__all__ = ["SparkplugPublisher", "NODE_METRICS", "DEVICE_METRICS", "NAMESPACE"]

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH = "Node Control/Rebirth"
# node metrics after bdSeq and Node Control/Rebirth: name -> (datatype, key in the daemon's status)
NODE_METRICS: dict[str, int] = {
    "Properties/Software Version": DataType.String, "Properties/Model": DataType.String,
    "Properties/Model Version": DataType.String, "Properties/Bundle": DataType.String,
    "Properties/Runtime": DataType.String, "Properties/Device": DataType.String,
    "Status/State": DataType.String, "Status/Problems": DataType.String,
}
# one set per station (device)
DEVICE_METRICS: dict[str, int] = {
    "Inspection/Outcome": DataType.String, "Inspection/Score": DataType.Double,
    "Inspection/Threshold": DataType.Double, "Inspection/Anomaly Area": DataType.Double,
    "Inspection/Latency ms": DataType.Double, "Inspection/Frame": DataType.String,
    "Inspection/Verdict Id": DataType.String, "Inspection/Seq": DataType.UInt64,
    "Inspection/Error": DataType.String, "Inspection/Scored At": DataType.DateTime,
    "Counters/OK": DataType.UInt64, "Counters/NG": DataType.UInt64, "Counters/Error": DataType.UInt64,
    "Self Test/Passed": DataType.Boolean,
}
_VALUE_FIELD = {DataType.String: "string_value", DataType.Double: "double_value", DataType.UInt64: "long_value",
                DataType.DateTime: "long_value", DataType.Boolean: "boolean_value"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _metric(p: Any, name: str | None, alias: int, dtype: int, value: Any, ts: int, historical: bool = False) -> None:
    m = p.metrics.add(alias=alias, timestamp=ts, datatype=dtype)
    if name is not None:
        m.name = name
    if historical:
        m.is_historical = True
    if value is None:
        m.is_null = True
    else:
        setattr(m, _VALUE_FIELD[dtype], value)


@register("sparkplug")
class SparkplugPublisher(Publisher):
    """A spool consumer speaking Sparkplug B on its own connection."""

    def __init__(self, name: str, queue: VerdictQueue, conn: MqttConnection, cfg: SparkplugConfig,
                 stations: list[str], state_dir: Path) -> None:
        super().__init__(name, queue, conn)
        self.qos = cfg.qos
        self.cfg = cfg
        self.node = cfg.edge_node_id or conn.client_id
        self.stations = list(stations)
        base = f"{NAMESPACE}/{cfg.group_id}"
        self.t_ndeath, self.t_nbirth = f"{base}/NDEATH/{self.node}", f"{base}/NBIRTH/{self.node}"
        self.t_ndata, self.t_ncmd = f"{base}/NDATA/{self.node}", f"{base}/NCMD/{self.node}"
        self._state_file = state_dir / "sparkplug.json"
        self._state = self._load_state()
        self._plock = threading.Lock()  # births, data and status go out in seq order from one thread at a time
        self._seq = 0
        self._birth_needed = True
        self._birth_wall = 0.0  # verdicts spooled before this (epoch s) are historical
        self._host_online = cfg.primary_host_id is None
        self._host_ts = 0
        self._status: dict[str, Any] = {}
        self._status_sent: tuple[str, str] | None = None
        self._birth_props: tuple[str, ...] | None = None
        self._last: dict[str, dict[str, Any]] = {s: {} for s in self.stations}
        self._down: set[str] = set()  # stations whose source failed: DDEATH sent, no DBIRTH until they are back
        self._device_news: dict[str, str] = {}  # station -> "DDEATH" | "DBIRTH", sent by the sender thread
        # aliases: node metrics 1.., then a block per station
        names = ["bdSeq", REBIRTH, *NODE_METRICS]
        self._node_alias = {n: i + 1 for i, n in enumerate(names)}
        self._dev_alias = {s: {n: 100 * (k + 1) + j for j, n in enumerate(DEVICE_METRICS)}
                           for k, s in enumerate(self.stations)}
        conn.before_connect(self._arm_will)
        conn.subscribe(self.t_ncmd, self._on_ncmd)
        if cfg.primary_host_id:
            conn.subscribe(f"{NAMESPACE}/STATE/{cfg.primary_host_id}", self._on_state)
        conn.on_disconnect(self._lost)

    # --- persisted session state --------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            d = json.loads(self._state_file.read_text())
            return {"bdSeq": int(d["bdSeq"]) % 256, "counted_upto": int(d.get("counted_upto", 0)),
                    "counters": {str(k): {o: int(n) for o, n in v.items()} for k, v in d.get("counters", {}).items()}}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {"bdSeq": -1, "counted_upto": 0, "counters": {}}

    def _save_state(self) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(self._state))
            os.replace(tmp, self._state_file)
        except OSError as err:  # a full disk costs counter continuity, never a verdict
            log.warning("sparkplug: cannot save %s: %s", self._state_file, err)

    @property
    def bdseq(self) -> int:
        return int(self._state["bdSeq"])

    def _arm_will(self) -> None:
        """Before each connection attempt: the next bdSeq, persisted, and the NDEATH that carries it."""
        self._state["bdSeq"] = (self.bdseq + 1) % 256
        self._save_state()
        self.conn.will(self.t_ndeath, self._ndeath(), qos=1, retain=False)

    def _ndeath(self) -> bytes:
        p = Payload(timestamp=_now_ms())
        _metric(p, "bdSeq", self._node_alias["bdSeq"], DataType.UInt64, self.bdseq, _now_ms())
        return p.SerializeToString()

    # --- network-thread events ----------------------------------------------------------------------
    def on_connected(self) -> None:
        self._birth_needed = True
        if self.cfg.primary_host_id:
            self._host_online = False  # until the retained STATE says otherwise

    def _lost(self) -> None:
        self._birth_needed = True

    def _on_ncmd(self, msg: Any, ack: Any) -> None:
        ack()
        try:
            p = Payload.FromString(bytes(msg.payload))
        except Exception as err:  # noqa: BLE001 - protobuf raises its own DecodeError; a bad NCMD is only logged
            log.warning("sparkplug: NCMD on %s is not a Sparkplug payload (%s); ignored", msg.topic, err)
            return
        for m in p.metrics:
            named = m.name == REBIRTH or (not m.name and m.alias == self._node_alias[REBIRTH])
            if named and m.HasField("boolean_value") and m.boolean_value:
                log.info("sparkplug: rebirth requested by NCMD")
                self._birth_needed = True
                self.wake()
            elif m.name and m.name != REBIRTH:
                log.warning("sparkplug: NCMD metric %r is not writable; ignored", m.name[:80])

    def _on_state(self, msg: Any, ack: Any) -> None:
        ack()
        try:
            body = json.loads(bytes(msg.payload))
            online, ts = bool(body["online"]), int(body.get("timestamp", 0))
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            log.warning("sparkplug: STATE on %s is not {\"online\": bool, \"timestamp\": ms}; ignored", msg.topic)
            return
        if ts and ts < self._host_ts:
            return  # an older STATE than the one we acted on
        self._host_ts = ts or self._host_ts
        if online and not self._host_online:
            log.info("sparkplug: primary host %s online; births follow", self.cfg.primary_host_id)
            self._birth_needed = True
        elif not online and self._host_online:
            log.warning("sparkplug: primary host %s offline; verdicts stay spooled until it is back",
                        self.cfg.primary_host_id)
        self._host_online = online
        self.wake()

    # --- stations (frame loop) ------------------------------------------------------------------------
    def station_down(self, station: str, reason: str) -> None:
        if station in self._dev_alias:
            self._down.add(station)
            self._device_news[station] = "DDEATH"
            self.wake()

    def station_up(self, station: str) -> None:
        if station in self._dev_alias:
            self._down.discard(station)
            self._device_news[station] = "DBIRTH"
            self.wake()

    # --- status from the daemon ---------------------------------------------------------------------
    def set_status(self, status: dict[str, Any]) -> None:
        self._status = status
        props = self._properties()
        if self._birth_props is not None and props != self._birth_props:
            self._birth_needed = True  # another model or runtime: tags are re-born with the new properties
        self.wake()

    def _properties(self) -> tuple[str, ...]:
        s, b = self._status, self._status.get("backend") or {}
        return (str(s.get("software_version", "")), str(s.get("model", "")), str(s.get("model_version", "")),
                str(s.get("bundle", "")), str(b.get("runtime", "")), str(b.get("device", "")))

    def _status_values(self) -> tuple[str, str]:
        return str(self._status.get("state", "starting")), "; ".join(self._status.get("problems") or [])

    # --- sender thread --------------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def ready(self) -> bool:
        if not self._host_online:
            return False
        with self._plock:
            if self._birth_needed:
                self._birth_needed = False
                if not self._births():
                    self._birth_needed = True
                    return False
            else:
                if self._status_values() != self._status_sent:
                    self._ndata_status()
                for station, kind in list(self._device_news.items()):
                    del self._device_news[station]
                    if kind == "DDEATH":
                        self._ddeath(station)
                    else:
                        self._dbirth(station, _now_ms())
        return True

    def _births(self) -> bool:
        now = _now_ms()
        self._birth_wall = time.time()
        self._seq = 0
        p = Payload(timestamp=now, seq=0)
        na = self._node_alias
        _metric(p, "bdSeq", na["bdSeq"], DataType.UInt64, self.bdseq, now)
        _metric(p, REBIRTH, na[REBIRTH], DataType.Boolean, False, now)
        self._birth_props = self._properties()
        state, problems = self._status_values()
        for name, value in zip(NODE_METRICS, (*self._birth_props, state, problems), strict=True):
            _metric(p, name, na[name], NODE_METRICS[name], value, now)
        if not self.conn.publish(self.t_nbirth, p.SerializeToString(), qos=0):
            return False
        self._status_sent = (state, problems)
        self._device_news.clear()
        for station in self.stations:
            if station not in self._down and not self._dbirth(station, now):
                return False
        log.info("sparkplug: NBIRTH bdSeq %d and %d DBIRTH(s) published as %s", self.bdseq, len(self.stations),
                 self.node)
        return True

    def _dbirth(self, station: str, now: int) -> bool:
        d = Payload(timestamp=now, seq=self._next_seq())
        values = self._device_values(station, self._last[station])
        for name, dtype in DEVICE_METRICS.items():
            _metric(d, name, self._dev_alias[station][name], dtype, values[name], now)
        return self.conn.publish(self._dtopic("DBIRTH", station), d.SerializeToString(), qos=0)

    def _ddeath(self, station: str) -> None:
        d = Payload(timestamp=_now_ms(), seq=self._next_seq())
        self.conn.publish(self._dtopic("DDEATH", station), d.SerializeToString(), qos=0)
        log.info("sparkplug: DDEATH for station %s", station)

    def _ndata_status(self) -> None:
        state, problems = self._status_values()
        now = _now_ms()
        p = Payload(timestamp=now, seq=self._next_seq())
        _metric(p, None, self._node_alias["Status/State"], DataType.String, state, now)
        _metric(p, None, self._node_alias["Status/Problems"], DataType.String, problems, now)
        if self.conn.publish(self.t_ndata, p.SerializeToString(), qos=0):
            self._status_sent = (state, problems)

    def _dtopic(self, kind: str, station: str) -> str:
        return f"{NAMESPACE}/{self.cfg.group_id}/{kind}/{self.node}/{station}"

    def _device_values(self, station: str, v: dict[str, Any]) -> dict[str, Any]:
        c = self._state["counters"].get(station, {})
        selftest = (self._status.get("selftest") or {}).get("passed")
        return {
            "Inspection/Outcome": v.get("outcome"), "Inspection/Score": v.get("score"),
            "Inspection/Threshold": v.get("threshold"), "Inspection/Anomaly Area": v.get("anomaly_area"),
            "Inspection/Latency ms": (v.get("latency") or {}).get("total_ms"), "Inspection/Frame": v.get("frame"),
            "Inspection/Verdict Id": v.get("id"), "Inspection/Seq": v.get("seq"), "Inspection/Error": v.get("error"),
            "Inspection/Scored At": v.get("scored_unix_ms"),
            "Counters/OK": c.get("ok", 0), "Counters/NG": c.get("ng", 0), "Counters/Error": c.get("error", 0),
            "Self Test/Passed": bool(selftest) if selftest is not None else None,
        }

    def message(self, row: Pending) -> tuple[str, bytes] | None:
        try:
            v = Verdict.from_bytes(row.payload)
        except ValidationError:
            log.warning("sparkplug: spool row %d is not a verdict of this version; not sent as Sparkplug", row.seq)
            return None
        if v.station not in self._dev_alias:
            log.warning("sparkplug: verdict for station %s, which has no DBIRTH; not sent as Sparkplug", v.station)
            return None
        if row.seq > int(self._state["counted_upto"]):  # counted once, however often it is sent
            c = self._state["counters"].setdefault(v.station, {})
            c[v.outcome] = c.get(v.outcome, 0) + 1
            self._state["counted_upto"] = row.seq
            self._save_state()
        d = v.model_dump()
        if row.created >= self._birth_wall:
            self._last[v.station] = d  # births show the latest live verdict
        historical = row.created < self._birth_wall
        values = self._device_values(v.station, d)
        with self._plock:
            p = Payload(timestamp=_now_ms(), seq=self._next_seq())
            for name, dtype in DEVICE_METRICS.items():
                if name == "Self Test/Passed":
                    continue  # changes only with a bundle: carried by the births
                _metric(p, None, self._dev_alias[v.station][name], dtype, values[name], v.scored_unix_ms, historical)
            return self._dtopic("DDATA", v.station), p.SerializeToString()

    def closing_messages(self) -> list[tuple[str, bytes | str, bool]]:
        return [(self.t_ndeath, self._ndeath(), False)]
