"""The fault campaign: bad input through the real CLI (`python -m tinygemma ...` in a subprocess).

Every case in CASES must exit 2 with one `error:` line on stderr (no traceback), print nothing on
stdout, and leave the world as it found it: every file byte for byte (sha256), and no new file,
folder, lock or temporary file. The tests after the table cover what needs its own set-up: a
read-only and a full file system, two writers on one folder, a killed run's lock, signals, and a
run that diverges.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinygemma import checkpoint
from tinygemma.data import write_prepared
from tinygemma.prepare import PrepareOptions, prepare
from tinygemma.runconfig import resolve_config
from tinygemma.train import train

TINY = ["--preset", "tiny", "--set", "batch_size=4", "--set", "block_size=16", "--set", "eval_windows=4",
        "--set", "warmup_iters=2", "--no-progress"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def tinygemma(*args, cwd, timeout=120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinygemma", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=ENV, timeout=timeout, **kw)


def start(*args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tinygemma", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=cwd, env=ENV, **kw)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under root -> sha256 for a regular file, else its kind (a FIFO is never opened)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            mode = os.lstat(path).st_mode
            rel = str(path.relative_to(root))
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(mode) else stat.S_IFMT(mode)
    return out


def assert_one_line_error(r: subprocess.CompletedProcess, *needles: str, alone: bool = True) -> str:
    """Exit 2 and one `error:` line, the last on stderr; `alone`: nothing else on stderr (refused at the door,
    before any progress line)."""
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    lines = r.stderr.splitlines()
    assert "Traceback" not in r.stderr and lines and lines[-1].startswith("error: "), r.stderr[-3000:]
    assert sum(line.startswith("error:") for line in lines) == 1 and (len(lines) == 1 or not alone), r.stderr[-3000:]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]


# ---------------------------------------------------------------- the world the cases run in
def _model_folder(root: Path, name: str, config) -> None:
    """A copy of the trained model whose config.json is `config` (a JSON value, or a callable making it)."""
    folder = root / name
    shutil.copytree(root / "model", folder, ignore=shutil.ignore_patterns("last.pt", "*.png", "metrics.jsonl"))
    (folder / "config.json").unlink()
    if callable(config):
        config(folder)
    else:
        (folder / "config.json").write_text(json.dumps(config))


def _data_folder(root: Path, name: str, meta) -> None:
    """A copy of the prepared data whose meta.json is `meta` (a JSON value, or a callable of the real one)."""
    folder = root / name
    shutil.copytree(root / "data", folder)
    real = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(meta(real) if callable(meta) else meta))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Prepared data (builtin stories, bpe:300), a tiny model trained 2 steps on it, and bad inputs."""
    root = tmp_path_factory.mktemp("faults")
    prepare(PrepareOptions(source="builtin", builtin_mb=0.1, builtin_val_mb=0.02, tokenizer="bpe:300",
                           out=str(root / "data"), num_proc=1, quiet=True))
    cfg = resolve_config("tiny", sets=["batch_size=4", "block_size=16", "eval_windows=4", "warmup_iters=2"],
                         flags={"data_dir": str(root / "data"), "out_dir": str(root / "model"), "max_iters": 2,
                                "progress": False})
    train(cfg)
    config = json.loads((root / "model" / "config.json").read_text())
    rng = np.random.default_rng(0)
    (root / "binary.txt").write_bytes(rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    (root / "utf16.txt").write_bytes(("Once upon a time there was a fox.\n" * 50).encode("utf-16"))
    (root / "bad.parquet").write_text("this is no parquet file\n")
    (root / "afile").write_text("a regular file where a folder should go\n")
    os.mkfifo(root / "fifo.txt")
    os.mkfifo(root / "fifo.toml")
    (root / "types.toml").write_text('lr = "fast"\n')
    (root / "batch.toml").write_text("batch_size = 2.5\n")
    (root / "model_table.toml").write_text("model = 3\n")
    (root / "broken.toml").write_text("lr = = 3\n")
    _model_folder(root, "model_empty", {})
    _model_folder(root, "model_list", [1, 2])
    _model_folder(root, "model_types", {**config, "model": {**config["model"], "hidden_size": "wide"}})
    _model_folder(root, "model_fifo", lambda folder: os.mkfifo(folder / "config.json"))
    _model_folder(root, "model_escape", {**config, "tokenizer": {**config["tokenizer"], "path": "../data/../../x.json"}})
    _model_folder(root, "model_devzero", config)
    (root / "model_devzero" / "tokenizer.json").unlink()
    (root / "model_devzero" / "tokenizer.json").symlink_to("/dev/zero")
    _model_folder(root, "model_fifo_tokenizer", config)
    (root / "model_fifo_tokenizer" / "tokenizer.json").unlink()
    os.mkfifo(root / "model_fifo_tokenizer" / "tokenizer.json")
    _data_folder(root, "data_bigid", lambda m: {**m, "tokenizer": {**m["tokenizer"], "vocab_size": 100}})
    _data_folder(root, "data_empty_meta", {})
    _data_folder(root, "data_list_meta", [])
    _data_folder(root, "data_bad_dtype", lambda m: {**m, "dtype": "float64"})
    write_prepared(root / "data_wide", {s: np.arange(2000) % 400 for s in ("train", "validation")},
                   {"name": "wide", "fingerprint": "wide", "vocab_size": 400, "eot_id": 0, "bos_id": None})
    return root


# (id, arguments, what the one error line must say). Relative paths: the cases run in the world's folder.
CASES = [
    # bad files
    ("prepare-not-parquet", ["prepare", "--source", "bad.parquet", "--out", "new"], ["not a readable Parquet"]),
    ("prepare-binary-text", ["prepare", "--source", "binary.txt", "--out", "new"], ["does not look like UTF-8"]),
    ("prepare-utf16-text", ["prepare", "--source", "utf16.txt", "--out", "new"], ["convert it to UTF-8"]),
    ("prepare-fifo-source", ["prepare", "--source", "fifo.txt", "--out", "new"], ["not a regular file"]),
    ("prepare-missing-source", ["prepare", "--source", "nowhere.txt", "--out", "new"], ["not found"]),
    ("prepare-val-fraction-nan", ["prepare", "--source", "builtin", "--val-fraction", "nan", "--out", "new"],
     ["val_fraction"]),
    ("eval-binary-text", ["eval", "--checkpoint", "model", "--text", "binary.txt"], ["does not look like UTF-8"]),
    # output paths
    ("prepare-out-is-a-file", ["prepare", "--source", "builtin", "--out", "afile"], ["afile is a file"]),
    ("prepare-out-under-a-file", ["prepare", "--source", "builtin", "--out", "afile/sub"], ["Not a directory"]),
    ("train-out-is-a-file", ["train", *TINY, "--data-dir", "data", "--out-dir", "afile"], ["afile is a file"]),
    ("quickstart-out-is-a-file", ["quickstart", "--source", "builtin", "--out-dir", "afile", "--data-dir", "new"],
     ["afile is a file"]),
    ("export-out-is-a-file", ["export", "--checkpoint", "model", "--out", "afile"], ["cannot write afile"]),
    ("import-out-is-a-file", ["import", "--checkpoint", "model", "--out", "afile"], ["cannot write afile"]),
    ("train-over-a-run", ["train", *TINY, "--data-dir", "data", "--out-dir", "model"], ["already holds a run"]),
    ("train-resume-nothing", ["train", *TINY, "--data-dir", "data", "--out-dir", "new", "--resume"],
     ["last.pt not found"]),
    # bad configs
    ("train-lr-nan", ["train", *TINY, "--data-dir", "data", "--out-dir", "new", "--set", "lr=nan"], ["lr must be a finite"]),
    ("train-n-layers-0", ["train", *TINY, "--data-dir", "data", "--out-dir", "new", "--set", "model.n_layers=0"],
     ["n_layers must be >= 1"]),
    ("train-batch-2.5-set", ["train", *TINY, "--data-dir", "data", "--out-dir", "new", "--set", "batch_size=2.5"],
     ["batch_size must be a whole number"]),
    ("train-batch-2.5-file", ["train", "--preset", "tiny", "--config", "batch.toml", "--data-dir", "data", "--out-dir",
                              "new"], ["batch_size must be a whole number"]),
    ("train-config-wrong-type", ["train", *TINY, "--config", "types.toml", "--data-dir", "data", "--out-dir", "new"],
     ["lr must be a finite number, got 'fast'"]),
    ("train-config-model-not-table", ["train", *TINY, "--config", "model_table.toml", "--data-dir", "data"],
     ["[model] must be a table"]),
    ("train-config-not-toml", ["train", *TINY, "--config", "broken.toml", "--data-dir", "data"], ["cannot parse"]),
    ("train-config-fifo", ["train", *TINY, "--config", "fifo.toml", "--data-dir", "data"], ["not a regular file"]),
    ("train-max-time-inf", ["train", *TINY, "--data-dir", "data", "--out-dir", "new", "--max-time", "inf"],
     ["max_time must be a finite"]),
    ("train-init-from-empty-config", ["train", *TINY, "--data-dir", "data", "--out-dir", "new", "--init-from",
                                      "model_empty"], ["model is missing"]),
    ("eval-config-json-empty", ["eval", "--checkpoint", "model_empty", "--data-dir", "data"], ["model is missing"]),
    ("eval-config-json-list", ["eval", "--checkpoint", "model_list", "--data-dir", "data"], ["got a list"]),
    ("eval-config-json-types", ["eval", "--checkpoint", "model_types", "--data-dir", "data"],
     ["hidden_size must be a whole number"]),
    ("eval-config-json-fifo", ["eval", "--checkpoint", "model_fifo", "--data-dir", "data"], ["not a regular file"]),
    ("generate-tokenizer-outside-folder", ["generate", "--checkpoint", "model_escape"], ["lies outside that folder"]),
    ("generate-tokenizer-is-dev-zero", ["generate", "--checkpoint", "model_devzero"], ["lies outside that folder"]),
    ("generate-tokenizer-is-a-fifo", ["generate", "--checkpoint", "model_fifo_tokenizer"], ["not a regular file"]),
    # token ids beyond the vocabulary, and meta.json
    ("train-ids-beyond-vocab", ["train", *TINY, "--data-dir", "data_bigid", "--out-dir", "new"], [">= vocab_size 100"]),
    ("eval-ids-beyond-vocab", ["eval", "--checkpoint", "model", "--data-dir", "data_bigid"], [">= vocab_size 100"]),
    ("inspect-ids-beyond-vocab", ["data", "inspect", "--data-dir", "data_bigid"], [">= vocab_size 100"]),
    ("eval-data-wider-than-model", ["eval", "--checkpoint", "model", "--data-dir", "data_wide"],
     ["400 ids but the model only 300"]),
    ("train-meta-json-empty", ["train", *TINY, "--data-dir", "data_empty_meta", "--out-dir", "new"],
     ["tokenizer must be a table"]),
    ("inspect-meta-json-list", ["data", "inspect", "--data-dir", "data_list_meta"], ["expected a JSON object"]),
    ("eval-meta-json-bad-dtype", ["eval", "--checkpoint", "model", "--data-dir", "data_bad_dtype"],
     ["dtype must be uint16 or uint32"]),
    # numbers
    ("generate-temperature-inf", ["generate", "--checkpoint", "model", "--temperature", "inf"], ["finite"]),
    ("generate-top-p-above-1", ["generate", "--checkpoint", "model", "--top-p", "1.5"], ["must be <= 1"]),
    ("generate-longer-than-context", ["generate", "--checkpoint", "model", "--max-new-tokens", "100000"],
     ["exceeds the model's context"]),
    ("eval-batch-size-0", ["eval", "--checkpoint", "model", "--data-dir", "data", "--batch-size", "0"],
     ["--batch-size: must be >= 1"]),
    ("eval-batch-size-2.5", ["eval", "--checkpoint", "model", "--data-dir", "data", "--batch-size", "2.5"],
     ["expected a whole number, got '2.5'"]),
    ("inspect-windows-negative", ["data", "inspect", "--data-dir", "data", "--windows", "-1"], ["--windows"]),
    ("quickstart-time-nan", ["quickstart", "--time", "nan", "--out-dir", "new", "--data-dir", "new"], ["finite"]),
]


@pytest.mark.parametrize("args,needles", [pytest.param(a, n, id=i) for i, a, n in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, args, needles):
    before = snapshot(world)
    r = tinygemma(*args, cwd=world)
    line = assert_one_line_error(r, *needles)
    assert "divisible" not in line
    assert r.stdout == "", r.stdout[-2000:]  # generate printed no prompt, train no config
    assert snapshot(world) == before


# ---------------------------------------------------------------- file systems that refuse
def _mount_tmpfs(folder: Path, options: str) -> bool:
    """Mount a tmpfs at folder (we are root in CI containers); False where that is not allowed."""
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tinygemma-test", str(folder)], capture_output=True)
    return r.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.fixture
def read_only(tmp_path):
    """A read-only folder: a read-only tmpfs as root, a 0o555 folder otherwise."""
    folder = tmp_path / "ro"
    if os.geteuid() == 0:
        if not _mount_tmpfs(folder, "ro,size=1m"):
            pytest.skip("root without the right to mount: cannot make a read-only file system here")
        yield folder
        _umount(folder)
    else:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


@pytest.mark.parametrize("command", ["prepare", "train"])
def test_read_only_output_is_one_line(world, read_only, command):
    before = snapshot(world)
    if command == "prepare":
        r = tinygemma("prepare", "--source", "builtin", "--out", read_only / "data", cwd=world)
    else:
        r = tinygemma("train", *TINY, "--data-dir", "data", "--out-dir", read_only, cwd=world)
    assert_one_line_error(r, "cannot write", "choose an output folder you can write to")
    assert snapshot(world) == before and list(read_only.iterdir()) == []


class FullDisk:
    """A folder on a small file system (a 4 MB tmpfs as root), or, where mounting is not allowed,
    RLIMIT_FSIZE for the child (EFBIG instead of ENOSPC; SIGXFSZ ignored so the write fails instead)."""

    def __init__(self, folder: Path):
        self.folder, self.mounted = folder, os.geteuid() == 0 and _mount_tmpfs(folder, "size=4m")
        folder.mkdir(parents=True, exist_ok=True)

    def fill(self, leave: int) -> None:
        """Leave only `leave` bytes free (tmpfs), or limit each file the child writes to that size."""
        self.limit = leave
        if self.mounted:
            free = shutil.disk_usage(self.folder).free
            with open(self.folder / "filler", "wb") as f:
                f.write(b"\0" * max(free - leave, 0))

    def run(self, *args, cwd) -> subprocess.CompletedProcess:
        def limit_files():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))

        return tinygemma(*args, cwd=cwd, preexec_fn=None if self.mounted else limit_files)

    def close(self) -> None:
        if self.mounted:
            _umount(self.folder)


@pytest.fixture
def full_disk(tmp_path):
    disk = FullDisk(tmp_path / "disk")
    yield disk
    disk.close()


def test_full_disk_during_prepare_keeps_the_earlier_output(world, full_disk, tmp_path):
    out = full_disk.folder / "data"
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    small.write_text("\n<|endoftext|>\n".join(f"Story {i}: a fox found {i} stones." for i in range(300)))
    big.write_text("\n<|endoftext|>\n".join(f"Story {i}: a fox found {i} shiny stones by the river." for i in range(60_000)))
    args = ["--tokenizer", "bpe:300", "--bpe-train-mb", "0.05", "--num-proc", "1", "--out", out]
    assert tinygemma("prepare", "--source", small, *args, cwd=tmp_path).returncode == 0
    before = snapshot(out)
    full_disk.fill(leave=200_000)  # the big source needs ~2 MB
    r = full_disk.run("prepare", "--source", big, *args, cwd=tmp_path)
    err = assert_one_line_error(r, "cannot write", alone=False)  # after prepare's own progress lines
    assert ("No space left" in err) if full_disk.mounted else ("too large" in err)
    assert snapshot(out) == before  # the earlier output, byte for byte, and no temporary file left


def test_full_disk_during_train_keeps_the_earlier_checkpoints(world, full_disk):
    out = full_disk.folder / "run"
    base = ["train", *TINY, "--data-dir", world / "data", "--out-dir", out, "--set", "eval_interval=2"]
    assert tinygemma(*base, "--max-iters", "2", cwd=world).returncode == 0
    kept = {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in ("last.pt", "best_model_params.pt")}
    full_disk.fill(leave=300_000)  # last.pt needs ~1.1 MB: the checkpoint writer fails
    r = full_disk.run(*base, "--max-iters", "4", "--resume", cwd=world)
    assert_one_line_error(r, "cannot write", ".pt")  # best_model_params.pt or last.pt: torch's checkpoint writer
    for name, sha in kept.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha
    assert not list(out.glob(".*.tmp")) and not (out / ".tinygemma.lock").exists()
    assert checkpoint.load_resume(out)["step"] == 2


# ---------------------------------------------------------------- one writer per folder
def _wait_for(predicate, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_second_train_is_refused_at_once_and_the_first_is_unharmed(world, tmp_path):
    out, other = tmp_path / "run", tmp_path / "other"
    args = ["train", *TINY, "--data-dir", world / "data", "--max-iters", "5"]
    first = start(*args, "--out-dir", out, "--max-iters", "1000000", "--set", "checkpoint_interval=5", cwd=tmp_path)
    assert _wait_for(lambda: (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text()) > 0)
    other.mkdir()
    (other / "last.pt").write_bytes(b"")  # refused right after its (free) lock: the same work up to that point
    times: dict[str, list[float]] = {"baseline": [], "second": []}
    pair = [("baseline", other), ("second", out)]
    for order in (pair, pair[::-1]):  # in both orders, and the fastest of each: the machine is shared
        for kind, folder in order:
            t0 = time.time()
            r = tinygemma(*args, "--out-dir", folder, cwd=tmp_path)
            times[kind].append(time.time() - t0)
            assert_one_line_error(r, *(("already holds a run",) if kind == "baseline" else
                                       (f"pid {first.pid}", "in use by tinygemma train")))
    assert first.poll() is None, "the first run ended before the checks did"
    assert min(times["second"]) - min(times["baseline"]) < 1.0, times  # refused at once, not after waiting
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 143, err[-2000:]
    step = checkpoint.load_resume(out)["step"]
    r = tinygemma(*args, "--out-dir", out, "--resume", "--max-iters", step + 2, cwd=tmp_path)
    assert r.returncode == 0 and checkpoint.load_resume(out)["step"] == step + 2, r.stderr[-2000:]
    assert not (out / ".tinygemma.lock").exists()


def test_second_prepare_is_refused_and_the_first_finishes(tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("\n<|endoftext|>\n".join(f"Story {i}: a fox found {i} stones by the river." for i in range(150_000)))
    args = ["prepare", "--source", text, "--tokenizer", "bpe:300", "--bpe-train-mb", "0.2", "--num-proc", "1",
            "--out", tmp_path / "data"]
    first = start(*args, cwd=tmp_path)
    assert _wait_for(lambda: (tmp_path / "data" / ".tinygemma.lock").exists())
    second = tinygemma(*args, "--force", cwd=tmp_path)
    assert first.poll() is None, "the first prepare ended before the second started: make its input larger"
    assert_one_line_error(second, f"pid {first.pid}", "in use by tinygemma prepare")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert tinygemma("data", "inspect", "--data-dir", tmp_path / "data", "--verify", cwd=tmp_path).returncode == 0


def test_second_quickstart_is_refused_and_sigterm_exits_143(tmp_path):
    args = ["quickstart", "--time", "5", "--builtin-mb", "0.3", "--data-dir", tmp_path / "data", "--out-dir",
            tmp_path / "models", "--no-progress"]
    first = subprocess.Popen([sys.executable, "-m", "tinygemma", *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=ENV, cwd=tmp_path)
    for line in first.stdout:
        if line.startswith("step 0: val loss"):
            break
    second = tinygemma(*args, cwd=tmp_path)
    assert_one_line_error(second, f"pid {first.pid}", "in use by tinygemma quickstart")
    first.send_signal(signal.SIGTERM)
    rest = first.communicate(timeout=300)[0]
    assert first.returncode == 128 + signal.SIGTERM, rest[-2000:]
    assert "stopped by SIGTERM" in rest and "quickstart` again resumes" in rest and "Traceback" not in rest
    assert checkpoint.load_resume(tmp_path / "models")["step"] >= 0


def test_a_killed_runs_lock_blocks_nobody(world, tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--data-dir", world / "data", "--out-dir", out]
    first = start(*args, "--max-iters", "100000", "--set", "eval_interval=100000", cwd=tmp_path)
    assert _wait_for(lambda: (out / "metrics.jsonl").exists())
    assert f"pid {first.pid}" in (out / ".tinygemma.lock").read_text()
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    assert (out / ".tinygemma.lock").exists()  # left behind, but the kernel released the flock
    r = tinygemma(*args, "--max-iters", "2", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (out / ".tinygemma.lock").exists()


# ---------------------------------------------------------------- a run that diverges
def test_non_finite_loss_hint_suggests_a_finite_lr_and_no_resume_without_last_pt(world, tmp_path):
    r = tinygemma("train", *TINY, "--data-dir", world / "data", "--out-dir", tmp_path / "run", "--set", "lr=1e300",
                  "--set", "warmup_iters=0", "--set", "grad_clip=0", cwd=tmp_path)
    err = assert_one_line_error(r, "not finite", "--set lr=1e+299", "no checkpoint was written yet")
    assert "inf" not in err.split("--set lr=")[1].split()[0] and "--resume continues" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_out_of_space_errno_table_names_what_to_do():
    """fsutil's mapping: the disk errors a campaign cannot always provoke here still map to one line."""
    from tinygemma.errors import TinyGemmaError
    from tinygemma.fsutil import writing

    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        with pytest.raises(TinyGemmaError, match="cannot write x"):
            with writing("x"):
                raise OSError(code, os.strerror(code))
    with pytest.raises(OSError):  # not a user's problem: still raises
        with writing("x"):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
