"""`tinygemma generate | eval | export | import` on a small model and small prepared data."""

import json
import subprocess
import sys

import pytest
import torch

from tinygemma.checkpoint import load_model, save_config, save_weights
from tinygemma.cli import main
from tinygemma.config import tiny
from tinygemma.prepare import PrepareOptions, prepare
from tinygemma.model import Gemma3Model
from tinygemma.tokenizer import load_tokenizer

STORY = "Once upon a time, there was a little cat. The cat liked to play in the sun.\n\n"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A prepared gpt2 dataset and a tiny (untrained) model folder that names the tokenizer."""
    d = tmp_path_factory.mktemp("gen")
    (d / "train.txt").write_text(STORY * 20)
    (d / "valid.txt").write_text(STORY * 5)
    meta = prepare(PrepareOptions(source=str(d / "train.txt"), val_source=str(d / "valid.txt"), tokenizer="gpt2",
                                  out=d / "data", num_proc=1, quiet=True))
    torch.manual_seed(0)
    m = Gemma3Model(tiny(vocab_size=load_tokenizer("gpt2").vocab_size))
    save_weights(m.state_dict(), d / "models" / "best_model_params.pt")
    save_config(d / "models", m.config, meta["tokenizer"])
    return d


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_streams_and_is_reproducible(workdir, capsys):
    args = ["generate", "--checkpoint", workdir / "models", "--max-new-tokens", 12, "--seed", 7, "--device", "cpu"]
    code, out1, _ = run_cli(args, capsys)
    assert code == 0 and out1.startswith("Once upon a time") and len(out1) > len("Once upon a time\n")
    _, out2, _ = run_cli(args, capsys)
    assert out1 == out2
    code, out, _ = run_cli(args + ["--num-samples", 2, "--prompt", "The dog"], capsys)
    assert code == 0 and out.count("--- sample") == 2 and out.count("The dog") == 2


def test_generate_prints_tokens_as_they_come(workdir):
    """Through a pipe: the prompt appears before the process ends (flushed streaming)."""
    proc = subprocess.Popen([sys.executable, "-m", "tinygemma", "generate", "--checkpoint", str(workdir / "models"),
                             "--max-new-tokens", "20", "--device", "cpu"], stdout=subprocess.PIPE, text=True)
    first = proc.stdout.read(16)
    rest = proc.stdout.read()
    assert proc.wait() == 0 and first == "Once upon a time" and rest.endswith("\n")


def test_eval_json_on_split_and_text(workdir, capsys):
    code, out, _ = run_cli(["eval", "--checkpoint", workdir / "models", "--data-dir", workdir / "data",
                            "--json", "--block-size", 32], capsys)
    res = json.loads(out)
    meta = json.loads((workdir / "data" / "meta.json").read_text())
    assert code == 0 and res["split"] == "validation" and res["tokens"] == meta["validation"]["tokens"]
    assert res["bytes"] == meta["validation"]["bytes"] and res["bpb"] > 0 and res["ppl"] == pytest.approx(2.718281828 ** res["loss"])
    code, out, _ = run_cli(["eval", "--checkpoint", workdir / "models", "--text", workdir / "valid.txt",
                            "--block-size", 32], capsys)
    assert code == 0 and "bits/byte" in out


def test_eval_of_a_text_file_equals_eval_of_it_prepared(workdir):
    """Through the real CLI: `eval --text FILE` reads FILE as prepare did (--val-source FILE), same figures."""
    def cli_eval(*args):
        r = subprocess.run([sys.executable, "-m", "tinygemma", "eval", "--checkpoint", str(workdir / "models"),
                            "--device", "cpu", "--block-size", "16", "--json", *map(str, args)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    text, split = cli_eval("--text", workdir / "valid.txt"), cli_eval("--data-dir", workdir / "data")
    assert (text["tokens"], text["bytes"], text["documents"]) == (split["tokens"], split["bytes"], split["documents"])
    assert abs(text["bpb"] - split["bpb"]) < 1e-6 and text["bpb"] > 0


def test_export_then_generate_and_import_round_trip(workdir, capsys):
    hf_dir, back = workdir / "hf", workdir / "imported"
    code, out, _ = run_cli(["export", "--format", "hf", "--checkpoint", workdir / "models", "--out", hf_dir], capsys)
    assert code == 0 and (hf_dir / "model.safetensors").exists() and (hf_dir / "tokenizer.json").exists()
    gen = ["generate", "--max-new-tokens", 10, "--seed", 1, "--device", "cpu"]
    _, ours, _ = run_cli(gen + ["--checkpoint", workdir / "models"], capsys)
    _, exported, _ = run_cli(gen + ["--checkpoint", hf_dir], capsys)
    assert ours == exported
    code, _, _ = run_cli(["import", "--checkpoint", hf_dir, "--out", back], capsys)
    a, _, _ = load_model(workdir / "models")
    b, _, tok = load_model(back)
    assert code == 0 and tok is not None
    assert all(torch.equal(t, b.state_dict()[k]) for k, t in a.state_dict().items())


def test_user_errors_are_one_line(workdir, capsys):
    code, _, err = run_cli(["generate", "--checkpoint", workdir / "nothing"], capsys)
    assert code == 2 and err.startswith("error: no checkpoint") and err.count("\n") == 1
    code, _, err = run_cli(["generate", "--checkpoint", workdir / "models", "--top-p", 2, "--device", "cpu"], capsys)
    assert code == 2 and "top-p" in err
