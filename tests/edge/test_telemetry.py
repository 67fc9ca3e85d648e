"""No vendor telemetry: the OpenVINO backend and quantizer call no outside host.

Each runs in a child in a network namespace with no route, where an audit hook records every name lookup and
connection attempt (they fail there, so nothing leaves the machine even when the test fails). The control run
shows the hook does see the GA4 event of a bare `import openvino`.
"""

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino", reason="openvino not installed: pip install 'lineside[openvino]'")

# runs in the child; argv: log, mode ("lineside" or "bare"), model, work dir
_CHILD = r"""
import json, sys, urllib.parse
log, mode, model, work = sys.argv[1:5]
WATCHED = {"socket.connect", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
           "socket.getnameinfo", "socket.sendto", "socket.sendmsg", "http.client.connect", "urllib.Request"}

def hook(event, args):
    if event not in WATCHED:
        return
    if event == "urllib.Request":
        target = urllib.parse.urlsplit(args[0]).hostname
    elif event in ("socket.connect", "socket.sendto", "socket.sendmsg", "http.client.connect"):
        target = args[1]
    else:
        target = args[0]
    if isinstance(target, tuple):
        target = target[0]
    elif isinstance(target, (str, bytes)) and event.startswith("socket.") and event != "socket.getaddrinfo" \
            and event != "socket.gethostbyname" and event != "socket.gethostbyaddr":
        target = "unix:" + (target.decode(errors="replace") if isinstance(target, bytes) else target)
    # appended, so forked senders count too (openvino_telemetry sends from a multiprocessing child)
    with open(log, "a") as f:
        f.write(json.dumps([event, None if target is None else str(target)]) + "\n")

sys.addaudithook(hook)
if mode == "bare":
    import openvino
    sys.exit(0)

from pathlib import Path
from types import SimpleNamespace
import numpy as np
from edge.backends.openvino import OpenVinoBackend
from quantize.runtimes.openvino import convert_fp32, quantize_nncf

work = Path(work)
backend = OpenVinoBackend(Path(model), "cpu", work / "cache")
pred = backend.infer(np.full((1, 3, 32, 32), 0.5, np.float32))
assert pred.anomaly_map.shape == (32, 32), pred.anomaly_map.shape
convert_fp32(Path(model), work / "fp32.xml")
rng = np.random.default_rng(0)
reader = SimpleNamespace(inputs=[{"image": rng.random((1, 3, 32, 32), np.float32)} for _ in range(4)])
quantize_nncf(Path(model), work / "int8.xml", reader)
print("scored", pred.score)
"""


def _tiny_contract_model(path: Path) -> Path:
    """A 32 px graph of the I/O contract (a conv for NNCF to quantize); no training needed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(1, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["image", "w"], ["anomaly_map"], pads=[1, 1, 1, 1]),
             helper.make_node("ReduceMax", ["anomaly_map"], ["score"], axes=[1, 2, 3], keepdims=0)]
    io = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "contract", [io("image", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [io("anomaly_map", TensorProto.FLOAT, [1, 1, 32, 32]),
                               io("score", TensorProto.FLOAT, [1])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _is_local(target: str | None) -> bool:
    if target is None or target.startswith("unix:") or target in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(target.split("%")[0]).is_loopback
    except ValueError:
        return False


def _run_isolated(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess, list[list[str]], Path]:
    """The child in a fresh network namespace (only a down loopback); returns its run, attempts and $HOME."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) not installed")
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace (unshare -n needs root or CAP_SYS_ADMIN): "
                    f"{probe.stderr.strip()}")
    work = tmp_path / mode
    home = work / "home"  # an existing, empty $HOME: where openvino_telemetry keeps its consent and client id
    home.mkdir(parents=True)
    log = work / "attempts.jsonl"
    log.touch()
    # the vendors' own opt-outs (CI variables, a consent file in $HOME) must not hide a regression
    opt_outs = ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")
    env = {k: v for k, v in os.environ.items() if k not in opt_outs}
    env["HOME"] = str(home)
    model = _tiny_contract_model(work / "model.onnx")
    r = subprocess.run(["unshare", "-n", sys.executable, "-c", _CHILD, str(log), mode, str(model), str(work)],
                       env=env, capture_output=True, text=True, timeout=300)
    return r, [json.loads(line) for line in log.read_text().splitlines()], home


@pytest.mark.integration
def test_openvino_backend_and_quantizer_call_no_outside_host(tmp_path):
    r, attempts, home = _run_isolated(tmp_path, "lineside")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scored" in r.stdout
    outside = [a for a in attempts if not _is_local(a[1])]
    assert outside == [], f"network attempts to outside hosts: {outside}"
    assert list(home.iterdir()) == [], "wrote into $HOME"


@pytest.mark.integration
def test_bare_openvino_import_is_seen_calling_out(tmp_path):
    """Control: without the opt-out the same hook sees `import openvino` look up Google Analytics."""
    r, attempts, home = _run_isolated(tmp_path, "bare")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ["socket.getaddrinfo", "www.google-analytics.com"] in attempts, attempts
    assert (home / "intel").is_dir()  # and it wrote its consent directory into $HOME
