"""The training loop in-process on tiny synthetic data: schedule, exact resume, NaN guard, refusals."""

import json
import math

import numpy as np
import pytest
import torch

from tinygemma import checkpoint
from tinygemma.checkpoint import Progress, RunState, capture_rng
from tinygemma.config import TrainConfig, apply_overrides, tiny
from tinygemma.data import write_prepared
from tinygemma.errors import TinyGemmaError
from tinygemma.model import Gemma3Model
from tinygemma.runconfig import resolve_config
from tinygemma.optim import build_optimizer, lr_at, set_lr
from tinygemma.train import fixed_val_windows, train


def make_data(folder, vocab=256, n_train=8000, n_val=2000, seed=0):
    """A prepared folder (data.write_prepared): a learnable pattern plus 20% noise, 3 bytes per token."""
    rng = np.random.default_rng(seed)
    ids = {split: np.where(rng.random(n) < 0.2, rng.integers(0, vocab, n), (np.arange(n) * 7) % vocab)
           for split, n in (("train", n_train), ("validation", n_val))}
    tokenizer = {"name": "synthetic", "fingerprint": f"synthetic-{vocab}", "vocab_size": vocab, "eot_id": 0,
                 "bos_id": None}
    write_prepared(folder, ids, tokenizer, bytes_per_token=3)
    return folder


def tiny_run(tmp_path, out="out", **kw):
    base = dict(data_dir=str(tmp_path / "data"), out_dir=str(tmp_path / out), preset="tiny", batch_size=4,
                block_size=16, max_iters=6, lr_decay_iters=6, warmup_iters=2, lr=1e-2, eval_interval=3,
                eval_windows=8, log_interval=1, checkpoint_interval=100, progress=False)
    return resolve_config(flags={**base, **kw})


@pytest.fixture
def data(tmp_path):
    return make_data(tmp_path / "data")


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.55)  # halfway through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1) and lr_at(500, cfg) == pytest.approx(0.1)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 120))


def test_weight_decay_on_matrices_only():
    model = Gemma3Model(tiny())
    decay, no_decay = build_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu")).param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = Gemma3Model(tiny())
    opt = build_optimizer(model, TrainConfig(optimizer="muon", lr=1e-3, muon_lr=2e-2), torch.device("cpu"))
    adamw, muon = opt
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in model.named_parameters() if p.dim() == 2 and n != "embed_tokens.weight"}
    in_adamw = {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    assert in_adamw == set(names.values()) - in_muon and "embed_tokens.weight" in in_adamw
    set_lr(opt, 5e-4)  # half the peak lr: Muon's follows the same schedule from its own peak
    assert [g["lr"] for g in muon.param_groups] == [pytest.approx(1e-2)]
    assert [g["lr"] for g in adamw.param_groups] == [pytest.approx(5e-4)] * 2


def test_wsd_schedule_is_flat_then_linear_to_min_lr():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_iters=10, max_iters=110, lr_decay="wsd", decay_fraction=0.2)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(50, cfg) == pytest.approx(1.0) and lr_at(90, cfg) == pytest.approx(1.0)  # stable for 80% of 100
    assert lr_at(100, cfg) == pytest.approx(0.5)  # halfway through the last 20 steps
    assert lr_at(110, cfg) == pytest.approx(0.0) and lr_at(500, cfg) == pytest.approx(0.0)


def test_validation_windows_are_fixed_and_spread():
    starts = fixed_val_windows(1000, 16, 8)
    assert starts[0] == 0 and starts[-1] == 1000 - 17 and len(starts) == 8
    np.testing.assert_array_equal(starts, fixed_val_windows(1000, 16, 8))


def test_run_writes_the_model_folder_and_val_loss_falls(tmp_path, data):
    summary = train(tiny_run(tmp_path, max_iters=12, lr_decay_iters=12, eval_interval=6))
    out = tmp_path / "out"
    for name in ("best_model_params.pt", "last.pt", "config.json", "metrics.jsonl", "loss.png"):
        assert (out / name).exists(), name
    model = Gemma3Model(tiny())
    model.load_state_dict(torch.load(out / "best_model_params.pt"))  # the seed's loading code
    vals = [r["val_loss"] for r in read_metrics(out) if "val_loss" in r]
    assert len(vals) == 3 and vals[-1] < vals[0] - 0.1
    assert summary["best_val_loss"] == pytest.approx(min(vals))
    assert summary["best_val_bpb"] == pytest.approx(min(vals) / math.log(2) / 3.0)  # 3 bytes per token here
    rec = read_metrics(out)[-1]
    for key in ("step", "train_loss", "val_loss", "val_bpb", "lr", "grad_norm", "tokens_seen", "tok_per_s", "mfu",
                "peak_mem_mb"):
        assert key in rec, key
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["hidden_size"] == 64 and saved["train"]["lr"] == 1e-2 and saved["tokenizer"]["vocab_size"] == 256


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_exact_resume_matches_uninterrupted_run(tmp_path, data, optimizer):
    kw = dict(lr_decay_iters=8, optimizer=optimizer)
    straight = train(tiny_run(tmp_path, out="a", max_iters=8, **kw))["train_losses"]
    train(tiny_run(tmp_path, out="b", max_iters=5, **kw))
    resumed = train(tiny_run(tmp_path, out="b", max_iters=8, resume=True, **kw))["train_losses"]
    assert [s for s, _ in resumed] == [6, 7, 8]
    assert straight[5:] == resumed  # bit-exact, not merely close
    a, b = (checkpoint.load_resume(tmp_path / run) for run in "ab")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # metrics.jsonl of the resumed run holds every step once
    assert [r["step"] for r in read_metrics(tmp_path / "b") if "train_loss" in r] == list(range(1, 9))


def test_nan_loss_stops_with_hint_and_keeps_last_good_checkpoint(tmp_path, data):
    cfg = tiny_run(tmp_path, lr=1e30, warmup_iters=1, grad_clip=0.0, checkpoint_interval=1, max_iters=50)
    with pytest.raises(TinyGemmaError, match=r"not finite .* learning rate .* --set lr=") as err:
        train(cfg)
    assert "\n" not in str(err.value)
    state = checkpoint.load_resume(tmp_path / "out")
    assert state["step"] >= 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_early_stopping_after_patience_evals(tmp_path, data):
    # lr this small leaves fp32 weights unchanged, so the val loss never improves after step 0
    summary = train(tiny_run(tmp_path, lr=1e-30, min_lr=0.0, max_iters=100, eval_interval=2, patience=2))
    assert summary["step"] == 4 and "early stopping" in summary["stop_reason"]


def test_resume_refuses_changed_model_or_data_unless_forced(tmp_path, data):
    train(tiny_run(tmp_path, max_iters=2))
    bigger = apply_overrides(tiny(), ["n_layers=3"])
    with pytest.raises(TinyGemmaError, match="model config changed.*n_layers"):
        train(tiny_run(tmp_path, max_iters=4, resume=True, model=bigger))
    make_data(tmp_path / "data", seed=1)  # same shape, different tokens
    with pytest.raises(TinyGemmaError, match="data in --data-dir differs"):
        train(tiny_run(tmp_path, max_iters=4, resume=True))
    assert train(tiny_run(tmp_path, max_iters=4, resume=True, force=True))["step"] == 4


def test_run_state_reads_every_key_it_writes():
    state = RunState(model={"w": torch.ones(2)}, optimizer={"state": {}}, samplers=[{"step": 3}], rng=capture_rng(),
                     progress=Progress(5, 80, 1.5, 1, 2.0), history=[{"step": 5}], model_config=tiny(),
                     data_fingerprint={"train": "abc"}, train_config=TrainConfig().to_dict())
    written, read = state.state_dict(), set()

    class Recorder(dict):
        def __getitem__(self, key):
            read.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            read.add(key)
            return super().get(key, default)

    loaded = RunState()
    loaded.load_state_dict(Recorder(written))
    assert read == set(written)
    assert (loaded.progress, loaded.model_config, loaded.world_size, loaded.history) == (state.progress, tiny(), 1,
                                                                                         [{"step": 5}])


def test_an_early_version_1_resume_file_loads_and_another_version_is_named(tmp_path):
    state = RunState(samplers=[{}], model_config=tiny()).state_dict()
    del state["train_time"]  # written before lr_schedule=time counted the seconds
    checkpoint.save_resume(state, tmp_path)
    assert RunState.load(tmp_path).progress.train_time == 0.0
    torch.save({**state, "version": 7}, tmp_path / checkpoint.RESUME_NAME)
    with pytest.raises(TinyGemmaError, match="resume-file version 7, this tinygemma reads version 1") as err:
        RunState.load(tmp_path)
    assert "\n" not in str(err.value)


def test_a_resume_with_changed_settings_says_which(tmp_path, data, capsys):
    train(tiny_run(tmp_path, max_iters=2))
    train(tiny_run(tmp_path, max_iters=3, resume=True, lr=5e-3))
    assert "settings that differ from the run's own (lr)" in capsys.readouterr().out


def test_fresh_run_refuses_to_overwrite_a_run(tmp_path, data):
    train(tiny_run(tmp_path, max_iters=1))
    with pytest.raises(TinyGemmaError, match="already holds a run"):
        train(tiny_run(tmp_path, max_iters=1))


def test_resolve_config_layers_file_sets_and_flags(tmp_path, data):
    cfg_file = tmp_path / "run.toml"
    cfg_file.write_text('lr = 0.005\nbatch_size = 8\n[model]\nhidden_size = 32\n')
    cfg = resolve_config("tiny", str(cfg_file), ["batch_size=2", "model.n_layers=4"],
                         {"data_dir": str(tmp_path / "data"), "max_iters": 7})
    assert (cfg.lr, cfg.batch_size, cfg.max_iters) == (0.005, 2, 7)
    assert (cfg.model.hidden_size, cfg.model.n_layers, cfg.model.vocab_size) == (32, 4, 256)
    with pytest.raises(TinyGemmaError, match="did you mean batch_size"):
        resolve_config("tiny", None, ["batch_sise=2"], {"data_dir": str(tmp_path / "data")})
    cfg_file.write_text("[model]\nhiden_size = 3\n")
    with pytest.raises(TinyGemmaError, match="did you mean hidden_size"):
        resolve_config("tiny", str(cfg_file), [], {"data_dir": str(tmp_path / "data")})


def test_init_from_starts_with_the_given_weights(tmp_path, data):
    first = train(tiny_run(tmp_path, out="first", max_iters=6))
    train(tiny_run(tmp_path, out="second", max_iters=1, init_from=str(tmp_path / "first")))
    step0 = next(r["val_loss"] for r in read_metrics(tmp_path / "second") if r["step"] == 0)
    assert step0 == pytest.approx(first["best_val_loss"], abs=1e-6)


def test_time_schedule_follows_the_time_budget_and_needs_max_time():
    cfg = TrainConfig(lr=1.0, min_lr=0.0, warmup_iters=2, lr_schedule="time", max_time=100.0)
    assert lr_at(0, cfg, elapsed=0.0) == pytest.approx(0.5)  # warmup still counts steps
    assert lr_at(50, cfg, elapsed=50.0) == pytest.approx(0.5)
    assert lr_at(50, cfg, elapsed=100.0) == pytest.approx(0.0) and lr_at(9, cfg, elapsed=500.0) == pytest.approx(0.0)
    with pytest.raises(TinyGemmaError, match="needs max_time"):
        TrainConfig(lr_schedule="time")


def test_set_lr_schedule_time_with_the_max_time_flag(tmp_path, data):
    # `--set lr_schedule=time --max-time 60`: the flag arrives after the --set, so checking each --set
    # on its own would refuse a valid command line.
    cfg = resolve_config("tiny", None, ["lr_schedule=time"], {"data_dir": str(tmp_path / "data"), "max_time": 60.0})
    assert (cfg.lr_schedule, cfg.max_time) == ("time", 60.0)
    with pytest.raises(TinyGemmaError, match="needs max_time"):
        resolve_config("tiny", None, ["lr_schedule=time"], {"data_dir": str(tmp_path / "data")})


def test_max_time_stops_a_time_scheduled_run_and_counts_across_resumes(tmp_path, data):
    summary = train(tiny_run(tmp_path, max_iters=10**6, lr_schedule="time", max_time=1.5, eval_interval=10**6))
    assert summary["stop_reason"] == "max_time=1.5s" and summary["step"] > 0
    assert checkpoint.load_resume(tmp_path / "out")["train_time"] >= 1.5
    again = train(tiny_run(tmp_path, max_iters=10**6, lr_schedule="time", max_time=1.5, eval_interval=10**6, resume=True))
    assert again["step"] == summary["step"]  # the budget was already spent


@pytest.mark.slow
def test_compile_on_cpu_trains_the_same_losses(tmp_path, data):
    # --compile on CPU compiles each block (device.compile_model); the losses must match eager ones and
    # the checkpoint keeps the plain parameter names, so the seed's loading code still works.
    eager = train(tiny_run(tmp_path, out="eager", max_iters=3, compile=False))
    compiled = train(tiny_run(tmp_path, out="compiled", max_iters=3, compile=True))
    assert [s for s, _ in compiled["train_losses"]] == [1, 2, 3]
    for (_, a), (_, b) in zip(eager["train_losses"], compiled["train_losses"]):
        assert b == pytest.approx(a, abs=1e-4)
    sd = torch.load(tmp_path / "compiled" / checkpoint.BEST_NAME, weights_only=True)
    assert set(sd) == set(Gemma3Model(tiny(vocab_size=256)).state_dict())


def test_keep_freed_memory_stops_large_blocks_going_back_to_the_kernel():
    """After keep_freed_memory(), a 64 MB tensor comes from the heap, not a fresh mmap (run in a child)."""
    import subprocess
    import sys

    code = """
import ctypes, torch
from tinygemma.device import keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = MallInfo2
def mmapped_during_alloc():
    t = torch.empty(16 * 2**20)  # 64 MB
    n = libc.mallinfo2().hblkhd
    del t
    return n
before = mmapped_during_alloc()
assert keep_freed_memory()
after = mmapped_during_alloc()
print(before >= 64 * 2**20, after < 64 * 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]
