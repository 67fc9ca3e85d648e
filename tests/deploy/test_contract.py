"""The typed hand-off: model.json is the contract's ModelCard, written by export and read (validated) by
quantize and deploy; a card that does not fit is refused with one line naming the field."""

import json
import shutil
import subprocess
import sys

from edge.contract import CONTRACT_VERSION, ModelCard, read_model_card


def test_export_writes_a_valid_card_and_a_broken_one_is_named(tiny_run, tmp_path):
    card = read_model_card(tiny_run)
    assert isinstance(card, ModelCard) and card.contract_version == CONTRACT_VERSION
    assert card.normalisation.score_pool in ("max", "mean", "top") and card.size_px == 64
    assert card.model_dump()["family"] == "efficientad"  # family facts kept as extra fields
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    raw = json.loads((run / "model.json").read_text())
    del raw["threshold"]
    (run / "model.json").write_text(json.dumps(raw))
    r = subprocess.run([sys.executable, "-m", "deploy.cli", "--target", "cpu", str(run), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "model.json: threshold: Field required" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
