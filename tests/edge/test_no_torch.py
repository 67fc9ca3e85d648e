"""The line-side install never imports torch: every edge module loads, and the daemon checks a bundle, with torch
made unimportable."""

import subprocess
import sys

import pytest

# a meta-path finder that refuses torch (and what only training needs) for the child interpreter
BLOCK = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('torch', 'torchvision', 'training', 'quantize', 'nncf', 'matplotlib'):
            raise ImportError(f'{name} is not installed on the device')
        return None
sys.meta_path.insert(0, Block())
"""

MODULES = ["edge.app", "edge.cli", "edge.check", "edge.scoring", "edge.verdict", "edge.connection", "edge.commands",
           "edge.publishers", "edge.publishers.sparkplug", "edge.sources.folder", "edge.sources.mqtt", "edge.bundle",
           "edge.signing", "edge.backends.onnxruntime"]


def test_edge_modules_import_without_torch():
    code = BLOCK + "".join(f"import {m}\n" for m in MODULES) + "print('ok', 'torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split() == ["ok", "False"], r.stderr[-2000:]


@pytest.mark.integration
def test_daemon_check_runs_without_torch(bundle, tmp_path):
    from edge_helpers import edge_config

    cfg = edge_config(tmp_path, bundle, {"port": 1})
    code = BLOCK + f"from edge.cli import main; sys.exit(main(['--config', {str(cfg)!r}, '--check']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "self-test passed" in r.stdout, r.stdout + r.stderr  # the broker on port 1 is refused, the rest works
    assert "is not installed on the device" not in r.stderr
