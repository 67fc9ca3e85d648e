"""`edge-daemon --config /etc/lineside/config.yaml`: the line-side daemon."""

from __future__ import annotations

import argparse
import logging
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from edge.errors import EdgeError

    p = argparse.ArgumentParser(prog="edge-daemon", description="Score frames and publish verdicts over MQTT.")
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--check", action="store_true", help="validate config, verify and self-test the bundle, then exit")
    p.add_argument("--exit-when-idle", type=float, metavar="S", help="stop after S seconds without frames (demos, tests)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--debug", action="store_true")
    a = p.parse_args(argv)
    import faulthandler
    import signal

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` dumps every thread's stack to the journal
    logging.basicConfig(level=a.log_level.upper(), stream=sys.stdout,
                        format="%(levelname)s %(name)s: %(message)s")  # journald adds the timestamp
    from edge.app import Daemon, load_model
    from edge.config import load_config

    try:
        cfg = load_config(a.config)
        if a.check:
            from edge.signing import Trust

            trust = Trust.from_files(cfg.trust.keys, cfg.state_dir / "trust.json")
            m = load_model(cfg.bundle, cfg.backend.device, cfg.cache_dir, cfg.backend.threads, trust)
            signed = f"signed by key {m.bundle.signed_by}" if m.bundle.signed_by else "unsigned (no trust.keys)"
            print(f"ok: bundle {m.bundle.digest} ({signed}) self-test passed on {m.backend.info.runtime} "
                  f"{m.backend.info.device}")
            return 0
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
