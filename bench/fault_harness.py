"""Runs the real edge-daemon with one injected `kill -9` at a chosen point, for bench.faults.

    LINESIDE_FAULT_POINT=score|spool|puback|move LINESIDE_FAULT_AFTER=N python -m bench.fault_harness --config C

The N-th time the daemon passes the point it SIGKILLs itself: after scoring, before the verdict is spooled
(score); after spooling, before the frame is released (spool); after a verdict is handed to the broker, before
its PUBACK (puback); while moving the frame to done/ (move). The product has no such hooks: the harness wraps
the real functions from outside, then calls the real entry point.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable


def _after(n: int) -> Callable[[], None]:
    count = [0]

    def tick() -> None:
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    return tick


def main() -> int:
    point = os.environ.get("LINESIDE_FAULT_POINT", "")
    n = int(os.environ.get("LINESIDE_FAULT_AFTER", "0"))
    if point and n > 0:
        tick = _after(n)
        if point == "score":
            from edge.app import Daemon

            orig_score = Daemon.score

            def score(self: Any, *a: Any, **k: Any) -> Any:
                v = orig_score(self, *a, **k)
                tick()
                return v

            Daemon.score = score  # type: ignore[method-assign]
        elif point == "spool":
            from edge.queue import VerdictQueue

            orig_record = VerdictQueue.record

            def record(self: Any, *a: Any, **k: Any) -> Any:
                r = orig_record(self, *a, **k)
                tick()
                return r

            VerdictQueue.record = record  # type: ignore[method-assign]
        elif point == "puback":
            import paho.mqtt.client as mqtt

            orig_publish = mqtt.Client.publish

            def publish(self: Any, topic: str, *a: Any, **k: Any) -> Any:
                info = orig_publish(self, topic, *a, **k)
                if topic.endswith("/verdict"):
                    tick()
                return info

            mqtt.Client.publish = publish  # type: ignore[method-assign]
        elif point == "move":
            from edge.sources.folder import FolderSource

            orig_finish = FolderSource._finish

            def finish(self: Any, *a: Any, **k: Any) -> Any:
                tick()
                return orig_finish(self, *a, **k)

            FolderSource._finish = finish  # type: ignore[method-assign]
        else:
            print(f"fault_harness: unknown LINESIDE_FAULT_POINT {point!r}", file=sys.stderr)
            return 2
    from edge.cli import main as daemon_main

    return daemon_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
