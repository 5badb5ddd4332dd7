"""The training loop: `train(TrainConfig) -> summary dict`, plus the small helpers it calls.

One optimizer step = `grad_accum` micro-batches of `batch_size` sequences (global, split over
ranks) of `block_size` tokens. AdamW (decay on matrices only, fused on CPU and CUDA), linear warmup
then cosine decay to `min_lr`, gradient clipping, bf16 autocast + TF32 on CUDA, fp32 on CPU.
Every `eval_interval` steps the model is scored on a fixed set of validation windows (with
evaluate.windows_loss: the one loss `tinygemma eval` uses too); an improvement writes best_model_params.pt. last.pt (see checkpoint.save_resume) holds everything
an exact resume needs. SIGINT/SIGTERM save last.pt and return; a non-finite loss stops with a
hint and leaves the last good checkpoint alone. Parallelism lives in distributed.py.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tinygemma import checkpoint, distributed
from tinygemma.config import ModelConfig, TrainConfig
from tinygemma.device import COMPILE_DEFAULT, autocast_context, compile_model, keep_freed_memory, resolve_device
from tinygemma.distributed import DistInfo
from tinygemma.errors import TinyGemmaError
from tinygemma.evaluate import windows_loss
from tinygemma.metrics import MetricsLog, flops_per_token, peak_flops, peak_memory_mb
from tinygemma.model import Gemma3Model
from tinygemma.optim import build_optimizer, lr_at, set_lr
from tinygemma.runconfig import resolve_model_config


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


def capture_rng() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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


def check_resume(state: dict, model_cfg: ModelConfig, fingerprint: dict, force: bool) -> None:
    """Refuse to continue a run whose model shape or data changed, unless --force."""
    if force:
        return
    if state["model_config"] != model_cfg.to_dict():
        changed = sorted(k for k, v in model_cfg.to_dict().items() if state["model_config"].get(k) != v)
        raise TinyGemmaError(f"--resume: the model config changed since last.pt ({', '.join(changed)}); "
                             "use the original settings, or --force to try anyway")
    if state["data_fingerprint"] != fingerprint:
        changed = sorted(k for k, v in fingerprint.items() if state["data_fingerprint"].get(k) != v)
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


def write_model_folder(out_dir: Path, model_cfg: ModelConfig, meta: dict, data_dir: str, cfg: TrainConfig) -> None:
    """config.json (model, tokenizer ref, resolved train config) and a copy of a file-based tokenizer."""
    tok_ref = dict(meta["tokenizer"])
    if tok_ref.get("path"):
        from tinygemma.tokenizer import load_tokenizer

        tok_ref = load_tokenizer(meta["tokenizer"], data_dir).save(out_dir)
    checkpoint.save_config(out_dir, model_cfg, tok_ref, train=cfg.to_dict())


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


# ---------------------------------------------------------------- the run


@dataclass
class LoopState:
    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = float("inf")
    evals_since_best: int = 0
    train_time: float = 0.0  # seconds of training, summed over resumes (max_time, lr_schedule=time)
    stop_reason: str = ""
    train_losses: list = field(default_factory=list)  # (step, loss) of this invocation


def train(cfg: TrainConfig, on_eval: Callable[[dict], None] | None = None) -> dict:
    """Train as configured and return a summary (best val loss, bpb, tokens seen, paths, stop reason).

    `on_eval(record)` is called on rank 0 after each evaluation (the record is the metrics line).
    """
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


def _run(cfg: TrainConfig, device: torch.device, info: DistInfo, on_eval) -> dict:
    from tinygemma.data import BatchSampler, load_split, read_meta

    out_dir = Path(cfg.out_dir)
    meta = read_meta(cfg.data_dir)
    model_cfg = resolve_model_config(cfg, meta)
    cfg.model = model_cfg
    fingerprint = data_fingerprint(meta)
    state = _load_or_refuse(cfg, out_dir, model_cfg, fingerprint)
    if cfg.batch_size % info.world_size:
        raise TinyGemmaError(f"batch_size {cfg.batch_size} is not divisible by the {info.world_size} processes; "
                             "pick a multiple of --nproc_per_node")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "cpu":
        keep_freed_memory()
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank (FSDP2 shards each rank's copy)
    model = Gemma3Model(model_cfg)
    if state is not None:
        checkpoint.load_into(model, state["model"], source="last.pt")
    elif cfg.init_from:
        init_weights_from(model, cfg.init_from)
    model.to(device)
    model = _parallelize(model, cfg, info, device)
    optimizer = build_optimizer(model, cfg, device)
    sampler = BatchSampler(cfg.data_dir, "train", cfg.block_size, cfg.batch_size // info.world_size,
                           seed=cfg.seed, rank=info.rank, world_size=info.world_size, device=str(device))
    loop = LoopState()
    history = None
    if state is not None:
        loop, history = _restore(state, model, optimizer, sampler, info)
    elif info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        print("config: " + json.dumps(cfg.to_dict()), flush=True)
        write_model_folder(out_dir, model_cfg, meta, cfg.data_dir, cfg)
    log = MetricsLog(out_dir, history, cfg.tensorboard, cfg.wandb_project, cfg.to_dict()) if info.is_main else None
    run = _Run(cfg, model, optimizer, sampler, info, device, loop, log, on_eval, meta,
               load_split(cfg.data_dir, "validation"), fingerprint)
    return run.loop(fresh=state is None)


def _load_or_refuse(cfg: TrainConfig, out_dir: Path, model_cfg: ModelConfig, fingerprint: dict) -> dict | None:
    if cfg.resume:
        state = checkpoint.load_resume(out_dir)
        check_resume(state, model_cfg, fingerprint, cfg.force)
        return state
    if (out_dir / checkpoint.RESUME_NAME).exists() and not cfg.force:
        raise TinyGemmaError(f"{out_dir} already holds a run (last.pt); continue it with --resume, "
                             "start over with --force, or choose another --out-dir")
    return None


def _parallelize(model: Gemma3Model, cfg: TrainConfig, info: DistInfo, device: torch.device):
    """torch.compile (in place, so parameter names stay the same), then DDP or FSDP2."""
    use_compile = COMPILE_DEFAULT.get(device.type, False) if cfg.compile is None else cfg.compile
    if use_compile:
        compile_model(model, per_block=cfg.fsdp or device.type == "cpu")
    mp_dtype = torch.bfloat16 if (device.type == "cuda" and cfg.dtype != "float32") else None
    return distributed.wrap(model, info, device, cfg.fsdp, mp_dtype)


def _restore(state: dict, model, optimizer, sampler, info: DistInfo) -> tuple[LoopState, list]:
    distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    samplers = state["sampler"]
    if len(samplers) == info.world_size:
        sampler.load_state_dict(samplers[info.rank])
    elif info.is_main:
        print(f"note: last.pt was written by {len(samplers)} process(es), this run has {info.world_size}; "
              "the data order continues from a fresh position (the weights and optimizer resume exactly)")
    if len(samplers) != info.world_size:
        sampler.load_state_dict(_advanced_sampler_state(sampler, state["step"]))
    restore_rng(state["rng"])
    loop = LoopState(state["step"], state["tokens_seen"], state["best_val_loss"], state["evals_since_best"],
                     state.get("train_time", 0.0))
    return loop, state["history"]


def _advanced_sampler_state(sampler, step: int) -> dict:
    """A sampler state reseeded by the step, so a resume on another world size does not replay batches."""
    sd = sampler.state_dict()
    if "seed" in sd:
        sd["seed"] = int(sd["seed"]) + 1_000_003 * step
    return sd


class _Run:
    """The loop's moving parts, so each phase (step, log, eval, save) is its own short method."""

    def __init__(self, cfg, model, optimizer, sampler, info, device, loop, log, on_eval, meta, val, fingerprint):
        self.cfg, self.model, self.optimizer, self.sampler = cfg, model, optimizer, sampler
        self.info, self.device, self.s, self.log, self.on_eval = info, device, loop, log, on_eval
        self.meta, self.val, self.fingerprint = meta, val, fingerprint
        self.amp = autocast_context(cfg, device)
        self.out_dir = Path(cfg.out_dir)
        self.val_starts = fixed_val_windows(len(val), cfg.block_size, cfg.eval_windows)
        self.tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum
        self.flops_per_step = flops_per_token(cfg.model, cfg.block_size) * self.tokens_per_step
        self.peak = peak_flops(device)

    def print0(self, *args) -> None:
        if self.info.is_main:
            print(*args, flush=True)

    def loop(self, fresh: bool) -> dict:
        cfg, s = self.cfg, self.s
        self.print0(f"training {cfg.model.n_params:,} parameters on {self.device} x{self.info.world_size}, "
                    f"{self.tokens_per_step:,} tokens/step, from step {s.step}")
        with StopSignals() as signals:  # also covers the first eval, so Ctrl-C there saves too
            if fresh:
                self.eval_and_save_best(None)
            bar = self.progress_bar()
            self.started, self.time_before = time.time(), s.train_time
            last_log, tokens_at_log = time.time(), s.tokens_seen
            evaluated_at = s.step
            while not self.should_stop(signals):
                lr = lr_at(s.step, cfg, self.shared_elapsed())
                loss, norm = self.step(lr)
                s.step += 1
                s.tokens_seen += self.tokens_per_step
                s.train_losses.append((s.step, loss))
                bar.update(min(self.elapsed(), cfg.max_time) - bar.n if cfg.max_time else 1)
                record = None
                if s.step % cfg.log_interval == 0 or s.step % cfg.eval_interval == 0:
                    now = time.time()
                    tok_s = (s.tokens_seen - tokens_at_log) / max(now - last_log, 1e-9)
                    last_log, tokens_at_log = now, s.tokens_seen
                    record = self.train_record(loss, lr, norm, tok_s)
                    bar.set_postfix(step=s.step, loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:,.0f}")
                if s.step % cfg.eval_interval == 0:
                    self.eval_and_save_best(record)
                    evaluated_at = s.step
                elif record is not None and self.log is not None:
                    self.log.log(record)
                if s.step % cfg.checkpoint_interval == 0:
                    self.save_last()
        bar.close()
        if not signals.received and evaluated_at != s.step:
            self.eval_and_save_best(None)
        self.save_last()
        self.print0(f"stopped at step {s.step} ({s.stop_reason}); best val loss {s.best_val_loss:.4f}; "
                    f"resume with --resume --out-dir {self.out_dir}")
        if self.log is not None:
            self.log.close()
        return self.summary()

    def progress_bar(self):
        """Over steps, or over the seconds of --max-time when there is one, so the ETA is true."""
        from tqdm import tqdm

        cfg, s = self.cfg, self.s
        disable = not (self.info.is_main and cfg.progress)
        if cfg.max_time:
            return tqdm(total=cfg.max_time, initial=s.train_time, unit="s", disable=disable, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")
        return tqdm(total=cfg.max_iters, initial=s.step, unit="step", disable=disable, dynamic_ncols=True)

    def elapsed(self) -> float:
        """Seconds of training in this run and the runs it resumed."""
        return self.time_before + time.time() - self.started

    def shared_elapsed(self) -> float:
        """elapsed(), agreed by all ranks when the lr depends on it (so every rank steps with the same lr)."""
        if self.cfg.lr_schedule != "time":
            return 0.0
        return distributed.all_reduce_mean(self.elapsed(), self.info, self.device)

    def should_stop(self, signals: StopSignals) -> bool:
        cfg, s = self.cfg, self.s
        reasons = [
            (s.step >= cfg.max_iters, f"max_iters={cfg.max_iters}"),
            (cfg.max_tokens is not None and s.tokens_seen >= cfg.max_tokens, f"max_tokens={cfg.max_tokens}"),
            (cfg.max_time is not None and self.elapsed() >= cfg.max_time, f"max_time={cfg.max_time}s"),
            (cfg.patience is not None and s.evals_since_best >= cfg.patience,
             f"early stopping: {cfg.patience} evals without improvement"),
        ]
        local = next((why for hit, why in reasons if hit), "")
        if distributed.any_rank(bool(signals.received or local), self.info, self.device):
            s.stop_reason = signals.received or local or "another rank stopped"
            return True
        return False

    def step(self, lr: float) -> tuple[float, float]:
        try:
            return train_step(self.model, self.optimizer, self.sampler, self.cfg, self.amp, self.info, self.device, lr)
        except NonFiniteLoss as e:
            raise TinyGemmaError(
                f"{e} at step {self.s.step + 1} with lr {lr:.3g}: the learning rate is the likely cause; "
                f"lower it (e.g. --set lr={self.cfg.lr / 10:.3g}) or tighten --set grad_clip; "
                f"the last good checkpoint in {self.out_dir} was kept (--resume continues from it)"
            ) from None

    def train_record(self, loss: float, lr: float, norm: float, tok_s: float) -> dict:
        mfu = tok_s / self.tokens_per_step * self.flops_per_step / self.peak if self.peak else None
        return {"step": self.s.step, "tokens_seen": self.s.tokens_seen, "train_loss": loss, "lr": lr,
                "grad_norm": norm, "tok_per_s": round(tok_s, 1), "mfu": mfu,
                "peak_mem_mb": round(peak_memory_mb(self.device), 1)}

    def eval_and_save_best(self, record: dict | None) -> None:
        cfg, s = self.cfg, self.s
        val_loss = windows_loss(self.model, self.val, self.val_starts, cfg.block_size,
                                cfg.batch_size // self.info.world_size or 1, self.device, self.amp)
        val_loss = distributed.all_reduce_mean(val_loss, self.info, self.device)  # identical; keeps ranks agreed
        bpt = bytes_per_token(self.meta)
        record = dict(record or {"step": s.step, "tokens_seen": s.tokens_seen})
        record.update(val_loss=val_loss, val_bpb=val_loss / math.log(2) / bpt if bpt else None)
        improved = val_loss < s.best_val_loss
        if improved:
            s.best_val_loss, s.evals_since_best = val_loss, 0
        else:
            s.evals_since_best += 1
        if improved:
            model_sd = distributed.full_model_state(self.model)  # a collective under FSDP: all ranks call it
            if self.info.is_main:
                checkpoint.save_weights(model_sd, self.out_dir / checkpoint.BEST_NAME)
        if self.log is not None:
            self.log.log(record)
            self.log.plot()
            self.print0(f"step {s.step}: val loss {val_loss:.4f}" + (" (best, saved)" if improved else ""))
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
        model = distributed.unwrap(self.model)
        tok = load_tokenizer(self.meta["tokenizer"], self.cfg.data_dir)
        # Eager even when training is compiled: one short sample with a growing KV cache would
        # otherwise trigger a recompile per new shape.
        with torch.compiler.set_stance("force_eager"):
            text = generate(model, tok, self.cfg.sample_prompt, max_new_tokens=self.cfg.sample_tokens, seed=0)[0]
        model.train()
        restore_rng(rng)
        self.print0("sample: " + " ".join(text.split()))

    def save_last(self) -> None:
        model_sd = distributed.full_model_state(self.model)
        optim_sd = distributed.full_optimizer_state(self.model, self.optimizer)
        samplers = distributed.gather_objects(self.sampler.state_dict(), self.info)
        if not self.info.is_main:
            return
        s = self.s
        checkpoint.save_resume({
            "model": model_sd, "optimizer": optim_sd, "step": s.step, "tokens_seen": s.tokens_seen,
            "best_val_loss": s.best_val_loss, "evals_since_best": s.evals_since_best, "rng": capture_rng(),
            "train_time": self.elapsed(),
            "sampler": samplers, "history": self.log.history, "model_config": self.cfg.model.to_dict(),
            "data_fingerprint": self.fingerprint, "train_config": self.cfg.to_dict(),
            "world_size": self.info.world_size,
        }, self.out_dir)

    def summary(self) -> dict:
        s, bpt = self.s, bytes_per_token(self.meta)
        best = s.best_val_loss if math.isfinite(s.best_val_loss) else None
        return {
            "step": s.step, "tokens_seen": s.tokens_seen, "best_val_loss": best,
            "best_val_bpb": best / math.log(2) / bpt if best is not None and bpt else None,
            "stop_reason": s.stop_reason, "train_losses": s.train_losses,
            "out_dir": str(self.out_dir), "best_model": str(self.out_dir / checkpoint.BEST_NAME),
            "resume_file": str(self.out_dir / checkpoint.RESUME_NAME),
        }
