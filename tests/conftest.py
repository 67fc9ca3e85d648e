"""Shared fixtures: a tiny synthetic dataset, a tiny trained run (session-scoped), a real MQTT broker."""

from __future__ import annotations

import getpass
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_exe() -> str | None:
    exe = shutil.which("mosquitto")
    if exe is None and Path("/usr/sbin/mosquitto").exists():
        exe = "/usr/sbin/mosquitto"
    return exe


class Mosquitto:
    """A real mosquitto on a loopback port; stop() and start() keep the port (for outage tests)."""

    def __init__(self, extra_conf: str = "", persistent: bool = False) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mosq-"))
        self.conf = self.dir / "mosquitto.conf"
        # persistent: sessions and their queued QoS-1 messages survive a restart, as on a plant broker
        # (run as root, mosquitto would drop to its own user, which cannot write this private folder)
        keep = (f"persistence true\npersistence_location {self.dir}/\nuser {getpass.getuser()}\n" if persistent
                else "persistence false\n")
        self.conf.write_text(extra_conf or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{keep}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([mosquitto_exe(), "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

    def close(self) -> None:
        """Stop for good and remove the config (and any persistence db) folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture()
def broker():
    if mosquitto_exe() is None:
        pytest.skip("mosquitto not installed (scripts/setup.sh installs it)")
    b = Mosquitto()
    b.start()
    yield b
    b.close()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from training.synth import SynthSpec, write_synthetic

    root = tmp_path_factory.mktemp("synth") / "data"
    return write_synthetic(root, SynthSpec(size_px=128, n_train=16, n_val=6, n_test_good=6, n_structural=6, n_logical=6))


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    """A tiny EfficientAD trained a few steps at 64 px: the folder `edge-train fit` writes (ONNX, report)."""
    from training.config import FitConfig
    from training.data import open_dataset
    from training.pipeline import train_run

    out = tmp_path_factory.mktemp("run")
    cfg = FitConfig(model="efficientad-tiny", size_px=64, steps=40, batch_size=4, checkpoint_every=20)
    train_run(cfg, open_dataset(tiny_data), out, progress=False)
    return out


@pytest.fixture(scope="session")
def bundle(tiny_run, tmp_path_factory) -> Path:
    """An ARM (ONNX Runtime INT8) bundle of the tiny run, built with the real edge-deploy CLI."""
    import sys

    out = tmp_path_factory.mktemp("bundle") / "b"
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "--target", "arm", str(tiny_run), "--out", str(out),
                        "--max-drop", "1.0", "--max-far-increase", "1.0"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out
