"""torchrun on CPU (gloo): 2-process DDP follows the 1-process curve, FSDP2 equals DDP, checkpoints
load in one process and resume across world sizes."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tinygemma import checkpoint
from tinygemma.config import tiny
from tinygemma.model import Gemma3Model

sys.path.insert(0, str(Path(__file__).parent))
from test_train_cli import make_data  # noqa: E402

COMMON = ["--preset", "tiny", "--set", "batch_size=8", "--set", "block_size=32", "--set", "eval_windows=16",
          "--set", "eval_interval=10", "--set", "log_interval=1", "--set", "warmup_iters=2", "--set", "lr=1e-2",
          "--set", "lr_decay_iters=20", "--set", "dtype=float32", "--max-iters", "20", "--no-progress"]

# DDP ranks draw different windows than the single process (each rank has its own stream), so the
# curves agree only statistically. Observed here: val 4.698 vs 4.728 at step 10, 4.284 vs 4.334 at
# step 20 (from 5.553); the bound is 3x the largest observed gap.
VAL_TOLERANCE = 0.15


def run(args, nproc, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] \
        if nproc > 1 else [sys.executable]
    proc = subprocess.Popen([*launcher, "-m", "tinygemma", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: no orphans left behind
        stdout, stderr = proc.communicate()
        pytest.fail("torchrun timed out:\n" + stdout[-2000:] + stderr[-2000:])
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return stdout


def val_losses(out):
    return [r["val_loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]


@pytest.mark.slow
def test_ddp_and_fsdp2_follow_the_single_process_curve(tmp_path):
    data = make_data(tmp_path / "data")
    outs = {name: tmp_path / name for name in ("one", "ddp", "fsdp")}
    run([*COMMON, "--data-dir", str(data), "--out-dir", str(outs["one"])], 1, tmp_path)
    run([*COMMON, "--data-dir", str(data), "--out-dir", str(outs["ddp"])], 2, tmp_path)
    run([*COMMON, "--data-dir", str(data), "--out-dir", str(outs["fsdp"]), "--fsdp"], 2, tmp_path)
    one, ddp, fsdp = (val_losses(outs[k]) for k in ("one", "ddp", "fsdp"))
    assert len(one) == len(ddp) == 3 and one[0] == pytest.approx(ddp[0], abs=1e-6)  # same init
    assert one[-1] < one[0] - 0.5  # it learned something, so the comparison means something
    assert max(abs(a - b) for a, b in zip(one, ddp)) < VAL_TOLERANCE
    assert fsdp == pytest.approx(ddp, abs=1e-4)  # same data per rank, same maths: FSDP2 == DDP
    for name in ("ddp", "fsdp"):  # the checkpoints are plain, unsharded state dicts
        model = Gemma3Model(tiny())
        model.load_state_dict(torch.load(outs[name] / "best_model_params.pt"))
        assert checkpoint.load_resume(outs[name])["world_size"] == 2
    # an FSDP2 run from 2 processes resumes in 1
    resume = [*COMMON[:-3], "--max-iters", "22", "--no-progress", "--data-dir", str(data), "--out-dir",
              str(outs["fsdp"]), "--resume"]
    stdout = run(resume, 1, tmp_path)
    assert "written by 2 process(es)" in stdout
    assert checkpoint.load_resume(outs["fsdp"])["step"] == 22
