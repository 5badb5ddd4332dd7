"""`tinygemma train` as a user runs it: CLI options, SIGTERM, and a kill in the middle of a save."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tinygemma import checkpoint
from tinygemma.cli import main
from tinygemma.data import write_prepared

TINY = ["--preset", "tiny", "--set", "batch_size=4", "--set", "block_size=16", "--set", "eval_windows=8",
        "--set", "warmup_iters=2", "--no-progress"]


def make_data(folder, vocab=256, n=6000):
    """A prepared folder (data.write_prepared): a counting pattern with a little noise, 4 bytes per token."""
    rng = np.random.default_rng(0)
    ids = {split: (np.arange(n) * 7 + rng.integers(0, 3, n)) % vocab for split in ("train", "validation")}
    tokenizer = {"name": "synthetic", "fingerprint": "synthetic", "vocab_size": vocab, "eot_id": 0, "bos_id": None}
    write_prepared(folder, ids, tokenizer, bytes_per_token=4)
    return folder


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for opt in ("--preset", "--config", "--set", "--data-dir", "--out-dir", "--max-iters", "--max-tokens", "--max-time",
                "--resume", "--init-from", "--patience", "--compile", "--no-compile", "--device", "--fsdp", "--dry-run",
                "--force"):
        assert opt in text, opt


def test_dry_run_prints_params_flops_memory(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    assert main(["train", *TINY, "--data-dir", str(data), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 86,656" in out and "FLOPs per token" in out and "memory estimate" in out
    assert not (tmp_path / "out").exists()


def test_unknown_set_key_is_a_one_line_error(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    assert main(["train", *TINY, "--data-dir", str(data), "--set", "learning_rate=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --set learning_rate") and "\n" not in err


@pytest.mark.slow
def test_cli_run_then_resume_with_more_iters(tmp_path, capsys):
    data, out = make_data(tmp_path / "data"), tmp_path / "out"
    args = ["train", *TINY, "--data-dir", str(data), "--out-dir", str(out), "--set", "eval_interval=2"]
    assert main([*args, "--max-iters", "2"]) == 0
    assert "config: {" in capsys.readouterr().out  # the resolved config is printed at start
    assert main([*args, "--max-iters", "4", "--resume"]) == 0
    assert checkpoint.load_resume(out)["step"] == 4
    assert json.loads((out / "config.json").read_text())["train"]["max_iters"] == 4


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint_and_exits_cleanly(tmp_path):
    data, out = make_data(tmp_path / "data"), tmp_path / "out"
    cmd = [sys.executable, "-m", "tinygemma", "train", *TINY, "--data-dir", str(data), "--out-dir", str(out),
           "--max-iters", "1000000", "--set", "eval_interval=1000000", "--set", "log_interval=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 4):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "SIGTERM" in output and "Traceback" not in output
    state = checkpoint.load_resume(out)
    assert state["step"] >= 3
    logged = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert logged[-1] == state["step"]  # the metrics end where the checkpoint does


KILL_DURING_SAVE = """
import sys, torch
from tinygemma.checkpoint import save_resume
i = 0
while True:
    i += 1
    save_resume({"i": i, "model": {"w": torch.full((8_000_000,), float(i))}}, sys.argv[1])
"""


@pytest.mark.slow
def test_kill_during_save_never_leaves_a_corrupt_checkpoint(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for _attempt in range(10):
        proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(out)])
        deadline = time.time() + 30
        while time.time() < deadline and not ((out / "last.pt").exists() and list(out.glob(".last.pt.*.tmp"))):
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        state = checkpoint.load_resume(out)  # raises if last.pt were truncated
        assert torch.equal(state["model"]["w"], torch.full((8_000_000,), float(state["i"])))
        if list(out.glob(".last.pt.*.tmp")):  # the kill landed mid-write: that is the case under test
            return
    pytest.fail("never managed to kill the writer mid-save")
