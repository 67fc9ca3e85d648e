"""The faults bench.faults injects from outside the daemon (broker outage, an ACL refusing verdicts, a full
disk, malformed and retained commands) and the tampering cases it checks afterwards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

if TYPE_CHECKING:
    from bench.faults import Run

__all__ = ["inject", "tampering"]


def inject(run: Run, ev: str) -> None:
    """One outside fault (outage, acl, diskfull, commands); diskfull needs the tmpfs spool."""
    if ev == "outage":
        run.events.append("broker outage 6 s")
        run.broker.stop()
        time.sleep(6)
        run.broker.start()
    elif ev == "acl":
        run.events.append("broker ACL refuses the verdict topic for 6 s")
        run.acl.write_text("topic readwrite lineside/line1/status\ntopic readwrite lineside/line1/set/#\n"
                           "topic read lineside/#\n")
        run.broker.proc.send_signal(signal.SIGHUP)
        time.sleep(6)
        run.acl.write_text("topic readwrite lineside/#\n")
        run.broker.proc.send_signal(signal.SIGHUP)
    elif ev == "diskfull" and run.tmpfs:
        run.events.append("disk full for 6 s")
        filler = run.state / "filler"
        st = os.statvfs(run.state)
        free = st.f_bavail * st.f_frsize
        with filler.open("wb") as f:
            f.truncate(0)
            try:
                f.write(b"\0" * max(0, free - 16 * 1024))
            except OSError:
                pass
        time.sleep(6)
        filler.unlink()
    elif ev == "commands":
        run.events.append("malformed, retained and out-of-folder commands")
        end = time.monotonic() + 60  # commands are live messages: the daemon must be subscribed to get them
        while run.scada.status.get("state") not in ("online", "degraded") and time.monotonic() < end:
            time.sleep(0.1)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-ops", protocol=mqtt.MQTTv5)
        c.connect("127.0.0.1", run.broker.port)
        c.loop_start()
        end = time.monotonic() + 10
        while not c.is_connected() and time.monotonic() < end:
            time.sleep(0.05)
        for payload, retain in ((b'{"command":"reload","bundle":123,"id":"malformed"}', False), (b"\xff\x00", False),
                                (json.dumps({"command": "reload", "id": "retained"}).encode(), True),
                                (json.dumps({"command": "reload", "id": "outside", "bundle": "/etc"}).encode(), False)):
            c.publish("lineside/line1/set", payload, qos=1, retain=retain).wait_for_publish(5)
        time.sleep(1)
        c.loop_stop()
        c.disconnect()


def tampering(bundle: Path, key: Path | None, results: list[dict[str, Any]]) -> dict[str, bool]:
    """Each tampering case, True when refused: the hostile commands the run sent, then (with the bundle's
    public key) edited, re-signed and rolled-back bundles."""
    from edge.bundle import load_bundle
    from edge.errors import BundleError
    from edge.signing import Trust, generate_key, load_private_key, sign_manifest

    out: dict[str, bool] = {}
    by_id = {r.get("id"): r for r in results}
    for cid in ("malformed", "retained", "outside"):
        out[f"command: {cid}"] = by_id.get(cid, {}).get("result") == "refused"
    if not key:
        return out
    tmp = Path(tempfile.mkdtemp(prefix="lineside-tamper-"))
    trust = Trust.from_files([key], tmp / "trust.json")
    stranger = generate_key(tmp / "stranger")[0]

    def variant(name: str, signer: Path | None, resign: bool, **changes: Any) -> Path:
        d = tmp / name
        shutil.copytree(bundle, d)
        m = json.loads((d / "manifest.json").read_text())
        m.update(changes)
        (d / "manifest.json").write_text(json.dumps(m))
        if resign:
            (d / "manifest.sig").unlink(missing_ok=True)
            if signer is not None:
                sign_manifest(d, load_private_key(signer))
        return d

    cases = {"manifest edit (threshold 1e9)": variant("edit", None, False, threshold=1e9),
             "model + manifest swap, unsigned": variant("swap", None, True, threshold=1e9),
             "signed by another key": variant("foreign", stranger, True, threshold=1e9)}
    for name, d in cases.items():
        try:
            load_bundle(d, trust)
            out[name] = False
        except BundleError:
            out[name] = True
    version = load_bundle(bundle, trust).version
    trust.accept(version + 1)
    try:
        load_bundle(bundle, trust)
        out["rollback to an older version"] = False
    except BundleError:
        out["rollback to an older version"] = True
    shutil.rmtree(tmp, ignore_errors=True)
    return out
