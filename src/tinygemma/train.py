"""The training loop: `train(TrainConfig) -> summary dict`, plus the small helpers it calls.

`train` takes a resolved config (runconfig.resolve_config), then goes one way: the data
(`_load_data`: meta.json, this rank's sampler, the fixed validation windows), the model
(`_build_model`: last.pt's, --init-from's or fresh weights; compiled, wrapped) and its optimizer,
restored from last.pt on --resume, and the loop (`_Run`, which is the loop alone). One optimizer step = `grad_accum` micro-batches of
`batch_size` sequences (global, split over ranks) of `block_size` tokens; optimizers and lr
schedules are optim.py's, bf16 autocast and compile device.py's, parallelism distributed.py's.
Every `eval_interval` steps the model is scored on a fixed set of validation windows (with
evaluate.windows_loss: the one loss `tinygemma eval` uses too); an improvement writes
best_model_params.pt. last.pt is a checkpoint.RunState: everything an exact resume needs.
SIGINT/SIGTERM save last.pt and return; a non-finite loss stops with a hint and leaves the last
good checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tinygemma import checkpoint, distributed
from tinygemma.checkpoint import Progress, RunState, capture_rng, restore_rng
from tinygemma.config import ModelConfig, TrainConfig
from tinygemma.data import BatchSampler, load_split, read_meta
from tinygemma.device import COMPILE_DEFAULT, autocast_context, compile_model, keep_freed_memory, resolve_device
from tinygemma.distributed import DistInfo
from tinygemma.errors import TinyGemmaError
from tinygemma.evaluate import windows_loss
from tinygemma.metrics import MetricsLog, flops_per_token, peak_flops, peak_memory_mb
from tinygemma.model import Gemma3Model
from tinygemma.optim import Optimizers, build_optimizer, lr_at, set_lr


# ---------------------------------------------------------------- small helpers


def fixed_val_windows(n_tokens: int, block_size: int, n_windows: int) -> np.ndarray:
    """Start offsets of `n_windows` windows spread evenly over the split: the same every eval."""
    last = n_tokens - block_size - 1
    if last < 0:
        raise TinyGemmaError(f"the validation split has {n_tokens} tokens, fewer than block_size+1={block_size + 1}; "
                             "prepare more validation text or lower --set block_size")
    return np.unique(np.linspace(0, last, num=n_windows).astype(np.int64))


def data_fingerprint(meta: dict) -> dict:
    """What identifies the prepared data: the tokenizer and each split's checksum."""
    tok = meta.get("tokenizer") or {}
    return {
        "tokenizer": tok.get("fingerprint") or tok.get("name"),
        "train": (meta.get("train") or {}).get("sha256"),
        "validation": (meta.get("validation") or {}).get("sha256"),
    }


def bytes_per_token(meta: dict) -> float | None:
    """The validation split's average bytes per token (for val bits per byte); None if unknown."""
    v = meta.get("validation") or {}
    return v["bytes"] / v["tokens"] if v.get("bytes") and v.get("tokens") else None


class StopSignals:
    """SIGINT/SIGTERM set a flag that the loop checks between steps, so a save is never cut short."""

    def __init__(self):
        self.received: str | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals to the caller
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------- setup


def check_resume(saved: RunState, model_cfg: ModelConfig, fingerprint: dict, force: bool) -> None:
    """Refuse to continue a run whose model shape or data changed, unless --force."""
    if force:
        return
    if saved.model_config != model_cfg:
        changed = sorted(k for k, v in model_cfg.to_dict().items() if saved.model_config.to_dict().get(k) != v)
        raise TinyGemmaError(f"--resume: the model config changed since last.pt ({', '.join(changed)}); "
                             "use the original settings, or --force to try anyway")
    if saved.data_fingerprint != fingerprint:
        changed = sorted(k for k, v in fingerprint.items() if saved.data_fingerprint.get(k) != v)
        raise TinyGemmaError(f"--resume: the data in --data-dir differs from the run's ({', '.join(changed)} changed); "
                             "point --data-dir at the original data, or --force to continue on the new data")


def init_weights_from(model: Gemma3Model, source: str) -> None:
    """--init-from: our model folder's weights, or anything checkpoint.load_model reads (HF folder, GGUF)."""
    ours = Path(source) / checkpoint.BEST_NAME
    if ours.exists():  # no need to load the tokenizer just for the weights
        checkpoint.load_into(model, checkpoint.load_state_dict(ours), source=str(ours))
        return
    pretrained, _, _ = checkpoint.load_model(source)
    checkpoint.load_into(model, pretrained.state_dict(), source=source)


def write_model_folder(cfg: TrainConfig, meta: dict) -> None:
    """config.json in cfg.out_dir (model, tokenizer ref, resolved train config), and a copy of a file-based tokenizer."""
    tok_ref = dict(meta["tokenizer"])
    if tok_ref.get("path"):
        from tinygemma.tokenizer import load_tokenizer

        tok_ref = load_tokenizer(meta["tokenizer"], cfg.data_dir).save(cfg.out_dir)
    checkpoint.save_config(cfg.out_dir, cfg.model, tok_ref, train=cfg.to_dict())


# ---------------------------------------------------------------- one step


def train_step(model, optimizer, sampler, cfg: TrainConfig, amp, info: DistInfo, device: torch.device,
               lr: float) -> tuple[float, float]:
    """grad_accum micro-batches, clip, AdamW step. Returns (mean loss over ranks, grad norm)."""
    set_lr(optimizer, lr)
    total = torch.zeros((), device=device)
    for micro in range(cfg.grad_accum):
        x, y = sampler.next_batch()  # (b, T) int64 on device
        distributed.set_grad_sync(model, micro == cfg.grad_accum - 1)
        with amp:
            _, loss = model(x, y)
        (loss / cfg.grad_accum).backward()
        total += loss.detach()
    loss_value = distributed.all_reduce_mean(total.item() / cfg.grad_accum, info, device)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP2 returns a DTensor
    if not (math.isfinite(loss_value) and math.isfinite(norm)):
        what = "loss" if not math.isfinite(loss_value) else "gradient norm"
        raise NonFiniteLoss(what, loss_value, norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_value, norm


class NonFiniteLoss(Exception):
    def __init__(self, what: str, loss: float, norm: float):
        super().__init__(f"{what} is not finite (loss {loss}, grad norm {norm})")
        self.what = what


# ---------------------------------------------------------------- setting a run up


def train(cfg: TrainConfig, on_eval: Callable[[dict], None] | None = None) -> dict:
    """Train as configured and return a summary (best val loss, bpb, tokens seen, paths, stop reason).

    `cfg` is a resolved config (runconfig.resolve_config: its model is set). `on_eval(record)` is
    called on rank 0 after each evaluation (the record is the metrics line).
    """
    if cfg.model is None:
        raise ValueError("train() takes a resolved config: build it with tinygemma.runconfig.resolve_config")
    device = resolve_device(cfg.device)
    info = distributed.setup(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        summary = _run(cfg, device, info, on_eval)
    except BaseException:
        distributed.cleanup(wait_for_others=False)  # the other ranks may never reach a barrier
        raise
    distributed.cleanup(wait_for_others=True)
    return summary


@dataclass
class _Data:
    """The data side of a run, read before the model is built: meta.json, this rank's training batches
    and the fixed validation windows (all of block_size's uses in the data)."""

    meta: dict
    sampler: BatchSampler
    val: np.ndarray  # the validation split (a memmap)
    val_starts: np.ndarray  # fixed_val_windows: the same windows at every eval

    @property
    def fingerprint(self) -> dict:
        return data_fingerprint(self.meta)


def _load_data(cfg: TrainConfig, info: DistInfo, device: torch.device) -> _Data:
    if cfg.batch_size % info.world_size:
        raise TinyGemmaError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes; "
                             "pick a multiple of --nproc_per_node")
    meta = read_meta(cfg.data_dir)
    sampler = BatchSampler(cfg.data_dir, "train", cfg.block_size, cfg.batch_size // info.world_size,
                           seed=cfg.seed, rank=info.rank, world_size=info.world_size, device=str(device))
    val = load_split(cfg.data_dir, "validation")
    return _Data(meta, sampler, val, fixed_val_windows(len(val), cfg.block_size, cfg.eval_windows))


@dataclass
class _Parts:
    """One process's share of a run, built once: the config, where it runs, its data, model and optimizer."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    data: _Data
    model: torch.nn.Module  # maybe compiled, wrapped for DDP or sharded by FSDP2
    optimizer: Optimizers


def _run(cfg: TrainConfig, device: torch.device, info: DistInfo, on_eval) -> dict:
    """config (resolved) -> data -> model -> the loop."""
    data = _load_data(cfg, info, device)
    saved = _saved_run(cfg, data.fingerprint)
    model = _build_model(cfg, saved, device, info)
    parts = _Parts(cfg, info, device, data, model, build_optimizer(model, cfg, device))
    if saved is not None:
        _restore(parts, saved)
    if info.is_main:
        Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
        print("config: " + json.dumps(cfg.to_dict()), flush=True)
        write_model_folder(cfg, data.meta)
    return _Run(parts, saved, on_eval).run()


def _saved_run(cfg: TrainConfig, fingerprint: dict) -> RunState | None:
    """last.pt when resuming (checked against this run); refuses to start over a run without --force."""
    out_dir = Path(cfg.out_dir)
    if cfg.resume:
        saved = RunState.load(out_dir)
        check_resume(saved, cfg.model, fingerprint, cfg.force)
        return saved
    if (out_dir / checkpoint.RESUME_NAME).exists() and not cfg.force:
        raise TinyGemmaError(f"{out_dir} already holds a run (last.pt); continue it with --resume, "
                             "start over with --force, or choose another --out-dir")
    return None


def _build_model(cfg: TrainConfig, saved: RunState | None, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """The model with last.pt's, --init-from's or fresh weights, on `device`, compiled and wrapped as configured."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (FSDP2 shards each rank's copy)
    model = Gemma3Model(cfg.model)
    if saved is not None:  # before wrapping: FSDP2 then shards the loaded weights
        checkpoint.load_into(model, saved.model, source="last.pt")
    elif cfg.init_from:
        init_weights_from(model, cfg.init_from)
    model.to(device)
    return _parallelize(model, cfg, info, device)


def _parallelize(model: Gemma3Model, cfg: TrainConfig, info: DistInfo, device: torch.device):
    """torch.compile (in place, so parameter names stay the same), then DDP or FSDP2."""
    use_compile = COMPILE_DEFAULT.get(device.type, False) if cfg.compile is None else cfg.compile
    if use_compile:
        compile_model(model, per_block=cfg.fsdp or device.type == "cpu")
    mp_dtype = torch.bfloat16 if (device.type == "cuda" and cfg.dtype != "float32") else None
    return distributed.wrap(model, info, device, cfg.fsdp, mp_dtype)


def _restore(parts: _Parts, saved: RunState) -> None:
    """The optimizer, this rank's data position and the RNGs from last.pt (the weights are loaded in _build)."""
    info = parts.info
    distributed.load_optimizer_state(parts.model, parts.optimizer, saved.optimizer)
    if saved.world_size == info.world_size:
        parts.data.sampler.load_state_dict(saved.samplers[info.rank])
    else:
        parts.data.sampler.load_state_dict(_advanced_sampler_state(parts.data.sampler, saved.progress.step))
        if info.is_main:
            print(f"note: last.pt was written by {saved.world_size} process(es), this run has {info.world_size}; "
                  "the data order continues from a fresh position (the weights and optimizer resume exactly)")
    changed = saved.changed_settings(parts.cfg.to_dict())
    if changed and info.is_main:
        print(f"note: resuming with settings that differ from the run's own ({', '.join(changed)}); "
              "the continuation is not the run it would have been", flush=True)
    restore_rng(saved.rng)


def _advanced_sampler_state(sampler, step: int) -> dict:
    """A sampler state reseeded by the step, so a resume on another world size does not replay batches."""
    sd = sampler.state_dict()
    if "seed" in sd:
        sd["seed"] = int(sd["seed"]) + 1_000_003 * step
    return sd


# ---------------------------------------------------------------- the loop


class _Run:
    """The loop over one run's parts: each phase (step, log, eval, save) is its own short method."""

    def __init__(self, parts: _Parts, saved: RunState | None, on_eval: Callable[[dict], None] | None):
        cfg, info = parts.cfg, parts.info
        self.parts, self.cfg, self.info, self.device, self.on_eval = parts, cfg, info, parts.device, on_eval
        self.fresh = saved is None
        self.progress = saved.progress if saved is not None else Progress()
        history = saved.history if saved is not None else None
        self.log = MetricsLog(cfg.out_dir, history, cfg.tensorboard, cfg.wandb_project, cfg.to_dict()) \
            if info.is_main else None
        self.train_losses: list[tuple[int, float]] = []  # (step, loss) of this invocation
        self.out_dir = Path(cfg.out_dir)
        self.amp = autocast_context(cfg, parts.device)
        self.tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum
        self.flops_per_step = flops_per_token(cfg.model, cfg.block_size) * self.tokens_per_step
        self.peak = peak_flops(parts.device)
        self.time_before = self.progress.train_time  # seconds trained by the runs this one resumes
        self.started = time.time()  # restarted when the first step starts (the first eval is not training)
        self.logged = (self.started, self.progress.tokens_seen)  # time and tokens at the last metrics line
        self.stop_reason = ""

    def print0(self, *args) -> None:
        if self.info.is_main:
            print(*args, flush=True)

    def run(self) -> dict:
        p = self.progress
        self.print0(f"training {self.cfg.model.n_params:,} parameters on {self.device} x{self.info.world_size}, "
                    f"{self.tokens_per_step:,} tokens/step, from step {p.step}")
        with StopSignals() as signals:  # also covers the first eval, so Ctrl-C there saves too
            if self.fresh:
                self.eval_and_save_best(None)
            bar = self.progress_bar()
            self.started = time.time()
            self.logged = (self.started, p.tokens_seen)
            evaluated_at = p.step
            while not self.should_stop(signals):
                if self.one_step(bar):
                    evaluated_at = p.step
        bar.close()
        if not signals.received and evaluated_at != p.step:
            self.eval_and_save_best(None)
        self.save_last()
        self.print0(f"stopped at step {p.step} ({self.stop_reason}); best val loss {p.best_val_loss:.4f}; "
                    f"resume with --resume --out-dir {self.out_dir}")
        if self.log is not None:
            self.log.close()
        return self.summary()

    def one_step(self, bar) -> bool:
        """One optimizer step, then its log line, eval and save when they are due; True if it evaluated."""
        cfg, p = self.cfg, self.progress
        lr = lr_at(p.step, cfg, self.shared_elapsed())
        loss, norm = self.step(lr)
        p.step += 1
        p.tokens_seen += self.tokens_per_step
        self.train_losses.append((p.step, loss))
        bar.update(min(self.elapsed(), cfg.max_time) - bar.n if cfg.max_time else 1)
        record = None
        if p.step % cfg.log_interval == 0 or p.step % cfg.eval_interval == 0:
            record = self.train_record(loss, lr, norm)
            bar.set_postfix(step=p.step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tok_per_s']:,.0f}")
        evaluates = p.step % cfg.eval_interval == 0
        if evaluates:
            self.eval_and_save_best(record)
        elif record is not None and self.log is not None:
            self.log.log(record)
        if p.step % cfg.checkpoint_interval == 0:
            self.save_last()
        return evaluates

    def progress_bar(self):
        """Over steps, or over the seconds of --max-time when there is one, so the ETA is true."""
        from tqdm import tqdm

        cfg, p = self.cfg, self.progress
        disable = not (self.info.is_main and cfg.progress)
        if cfg.max_time:
            return tqdm(total=cfg.max_time, initial=p.train_time, unit="s", disable=disable, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        return tqdm(total=cfg.max_iters, initial=p.step, unit="step", disable=disable, dynamic_ncols=True)

    def elapsed(self) -> float:
        """Seconds of training in this run and the runs it resumed; kept in progress.train_time."""
        self.progress.train_time = self.time_before + time.time() - self.started
        return self.progress.train_time

    def shared_elapsed(self) -> float:
        """elapsed(), agreed by all ranks when the lr depends on it (so every rank steps with the same lr)."""
        if self.cfg.lr_schedule != "time":
            return 0.0
        return distributed.all_reduce_mean(self.elapsed(), self.info, self.device)

    def should_stop(self, signals: StopSignals) -> bool:
        cfg, p = self.cfg, self.progress
        reasons = [
            (p.step >= cfg.max_iters, f"max_iters={cfg.max_iters}"),
            (cfg.max_tokens is not None and p.tokens_seen >= cfg.max_tokens, f"max_tokens={cfg.max_tokens}"),
            (cfg.max_time is not None and self.elapsed() >= cfg.max_time, f"max_time={cfg.max_time}s"),
            (cfg.patience is not None and p.evals_since_best >= cfg.patience,
             f"early stopping: {cfg.patience} evals without improvement"),
        ]
        local = next((why for hit, why in reasons if hit), "")
        if distributed.any_rank(bool(signals.received or local), self.info, self.device):
            self.stop_reason = signals.received or local or "another rank stopped"
            return True
        return False

    def step(self, lr: float) -> tuple[float, float]:
        parts = self.parts
        try:
            return train_step(parts.model, parts.optimizer, parts.data.sampler, self.cfg, self.amp, self.info,
                              self.device, lr)
        except NonFiniteLoss as e:
            raise TinyGemmaError(
                f"{e} at step {self.progress.step + 1} with lr {lr:.3g}: the learning rate is the likely cause; "
                f"lower it (e.g. --set lr={self.cfg.lr / 10:.3g}) or tighten --set grad_clip; "
                f"the last good checkpoint in {self.out_dir} was kept (--resume continues from it)"
            ) from None

    def train_record(self, loss: float, lr: float, norm: float) -> dict:
        """The metrics line of this step, with tokens/s since the last one."""
        p, (then, tokens_then), now = self.progress, self.logged, time.time()
        tok_s = (p.tokens_seen - tokens_then) / max(now - then, 1e-9)
        self.logged = (now, p.tokens_seen)
        mfu = tok_s / self.tokens_per_step * self.flops_per_step / self.peak if self.peak else None
        return {"step": p.step, "tokens_seen": p.tokens_seen, "train_loss": loss, "lr": lr,
                "grad_norm": norm, "tok_per_s": round(tok_s, 1), "mfu": mfu,
                "peak_mem_mb": round(peak_memory_mb(self.device), 1)}

    def eval_and_save_best(self, record: dict | None) -> None:
        cfg, p = self.cfg, self.progress
        data = self.parts.data
        val_loss = windows_loss(self.parts.model, data.val, data.val_starts, cfg.block_size,
                                cfg.batch_size // self.info.world_size or 1, self.device, self.amp)
        val_loss = distributed.all_reduce_mean(val_loss, self.info, self.device)  # identical; keeps ranks agreed
        bpt = bytes_per_token(data.meta)
        record = dict(record or {"step": p.step, "tokens_seen": p.tokens_seen})
        record.update(val_loss=val_loss, val_bpb=val_loss / math.log(2) / bpt if bpt else None)
        improved = val_loss < p.best_val_loss
        if improved:
            p.best_val_loss, p.evals_since_best = val_loss, 0
        else:
            p.evals_since_best += 1
        if improved:
            model_sd = distributed.full_model_state(self.parts.model)  # a collective under FSDP: all ranks call it
            if self.info.is_main:
                checkpoint.save_weights(model_sd, self.out_dir / checkpoint.BEST_NAME)
        if self.log is not None:
            self.log.log(record)
            self.log.plot()
            self.print0(f"step {p.step}: val loss {val_loss:.4f}" + (" (best, saved)" if improved else ""))
            self.sample()
            if self.on_eval is not None:
                self.on_eval(record)

    def sample(self) -> None:
        """One generated line after an eval (sample_every_eval); keeps the RNG untouched for exact resume."""
        if not self.cfg.sample_every_eval or self.cfg.fsdp:
            return
        from tinygemma.generate import generate
        from tinygemma.tokenizer import load_tokenizer

        rng = capture_rng()
        model = distributed.unwrap(self.parts.model)
        tok = load_tokenizer(self.parts.data.meta["tokenizer"], self.cfg.data_dir)
        # Eager even when training is compiled: one short sample with a growing KV cache would
        # otherwise trigger a recompile per new shape.
        with torch.compiler.set_stance("force_eager"):
            text = generate(model, tok, self.cfg.sample_prompt, max_new_tokens=self.cfg.sample_tokens, seed=0)[0]
        model.train()
        restore_rng(rng)
        self.print0("sample: " + " ".join(text.split()))

    def save_last(self) -> None:
        """last.pt: the run state gathered from every rank, written by rank 0."""
        parts = self.parts
        model_sd = distributed.full_model_state(parts.model)
        optim_sd = distributed.full_optimizer_state(parts.model, parts.optimizer)
        samplers = distributed.gather_objects(parts.data.sampler.state_dict(), self.info)
        self.elapsed()
        if not self.info.is_main:
            return
        RunState(model=model_sd, optimizer=optim_sd, samplers=samplers, rng=capture_rng(),
                 progress=dataclasses.replace(self.progress), history=self.log.history, model_config=self.cfg.model,
                 data_fingerprint=parts.data.fingerprint, train_config=self.cfg.to_dict()).save(self.out_dir)

    def summary(self) -> dict:
        p, bpt = self.progress, bytes_per_token(self.parts.data.meta)
        best = p.best_val_loss if math.isfinite(p.best_val_loss) else None
        return {
            "step": p.step, "tokens_seen": p.tokens_seen, "best_val_loss": best,
            "best_val_bpb": best / math.log(2) / bpt if best is not None and bpt else None,
            "stop_reason": self.stop_reason, "train_losses": self.train_losses,
            "out_dir": str(self.out_dir), "best_model": str(self.out_dir / checkpoint.BEST_NAME),
            "resume_file": str(self.out_dir / checkpoint.RESUME_NAME),
        }
