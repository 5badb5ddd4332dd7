"""`tinygemma quickstart` end to end on a little built-in corpus: outputs, reuse, resume after Ctrl-C."""

import json
import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _cmd(tmp_path, minutes):
    return [sys.executable, "-m", "tinygemma", "quickstart", "--time", str(minutes), "--builtin-mb", "0.3",
            "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "models"), "--no-progress"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def test_quickstart_trains_reports_and_reuses_data(tmp_path):
    first = subprocess.run(_cmd(tmp_path, 0.05), capture_output=True, text=True, env=_env(), timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    out = first.stdout + first.stderr
    assert "built-in story corpus" in out and "HF_HUB_OFFLINE" in out  # says which data and why
    assert "sample: Once upon a time" in out  # a line per eval while training
    for i in (1, 2, 3):
        assert f"\n[{i}] Once upon a time" in first.stdout
    assert "bits per byte" in first.stdout and "tinygemma generate --checkpoint" in first.stdout
    assert "scored on " in first.stdout and "documents" in first.stdout  # which text the figure covers
    assert "validation: 1 document," not in first.stderr and "paragraphs per document" in first.stderr
    models = tmp_path / "models"
    for name in ("best_model_params.pt", "config.json", "loss.png", "metrics.jsonl", "last.pt"):
        assert (models / name).exists(), name
    assert json.loads((models / "quickstart.json").read_text())["status"] == "done"

    second = subprocess.run(_cmd(tmp_path, 0.02), capture_output=True, text=True, env=_env(), timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "already up to date" in second.stderr  # the prepared data is reused, and it says so
    assert "resuming" not in second.stdout  # a finished run is not resumed


def test_interrupted_quickstart_resumes(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, 5), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env())
    for line in proc.stdout:
        if line.startswith("step 0: val loss"):
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, rest[-2000:]
    assert "quickstart` again resumes" in rest
    state = json.loads((tmp_path / "models" / "quickstart.json").read_text())
    assert state["status"] == "interrupted"

    again = subprocess.run(_cmd(tmp_path, 0.02), capture_output=True, text=True, env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming the interrupted quickstart" in again.stdout
