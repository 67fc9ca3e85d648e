"""`edge-daemon --config /etc/lineside/config.yaml`: the line-side daemon."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from edge.errors import EdgeError

    p = argparse.ArgumentParser(prog="edge-daemon", description="Score frames and publish verdicts over MQTT.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML config (required unless --verdict-schema)")
    p.add_argument("--check", action="store_true", help="verify and self-test the bundle, check the folders and "
                   "connect to every broker, then exit (non-zero if anything would stop the real start)")
    p.add_argument("--verdict-schema", action="store_true", help="print the verdict's JSON Schema and exit")
    p.add_argument("--exit-when-idle", type=float, metavar="S", help="stop after S seconds without frames (demos, tests)")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"])
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    a = p.parse_args(argv)
    if a.verdict_schema:
        from edge.verdict import schema_text

        sys.stdout.write(schema_text())
        return 0
    if not a.config:
        p.error("--config is required (the daemon's YAML config, e.g. /etc/lineside/config.yaml)")
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack to the journal
    logging.basicConfig(level=a.log_level, stream=sys.stdout,
                        format="%(levelname)s %(name)s: %(message)s")  # journald adds the timestamp
    from edge.app import Daemon
    from edge.config import load_config

    try:
        cfg = load_config(a.config)
        if a.check:
            from edge.check import run_checks

            ok, bad = run_checks(cfg)
            for line in ok:
                print(f"ok: {line}")
            for line in bad:
                print(f"FAILED: {line}", file=sys.stderr)
            return 1 if bad else 0
        daemon = Daemon(cfg)
    except EdgeError as err:
        if a.debug:
            raise
        print(f"edge-daemon: error: {err}", file=sys.stderr)
        return 1
    daemon.install_signals()
    return daemon.run(stop_after_idle_s=a.exit_when_idle)


if __name__ == "__main__":
    sys.exit(main())
