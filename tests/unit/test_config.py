import dataclasses
import json

import pytest

from tinygemma.config import FULL, SLIDING, ModelConfig, TrainConfig, apply_overrides, model_preset, tiny
from tinygemma.errors import TinyGemmaError


def test_changing_depth_rederives_layer_types():
    cfg = apply_overrides(tiny(), ["n_layers=7"])
    assert cfg.layer_types == (SLIDING,) * 5 + (FULL, SLIDING)


def test_layer_types_set_after_depth_are_kept():
    cfg = apply_overrides(tiny(), ["n_layers=3", f"layer_types={FULL},{SLIDING},{FULL}"])
    assert cfg.layer_types == (FULL, SLIDING, FULL)


def test_nested_model_override_is_validated():
    cfg = apply_overrides(TrainConfig(model=model_preset("tiny")), ["model.n_layers=4", "lr=3e-4"])
    assert cfg.model.n_layers == len(cfg.model.layer_types) == 4 and cfg.lr == 3e-4
    with pytest.raises(TinyGemmaError, match="n_heads=3 must be a multiple of n_kv_heads=2"):
        apply_overrides(cfg, ["model.n_kv_heads=2", "model.n_heads=3"])


def test_unknown_key_suggests_close_match():
    with pytest.raises(TinyGemmaError, match="did you mean hidden_size"):
        apply_overrides(tiny(), ["hiden_size=8"])


# ---------------------------------------------------------------- validation at the door (issue 16)
# Each row: a field, a bad value. The error must be one line that names the field.
BAD_TRAIN = [
    ("lr", float("nan")), ("lr", float("inf")), ("lr", 0.0), ("lr", -1e-3), ("lr", "fast"), ("min_lr", -1.0),
    ("muon_lr", 0.0), ("muon_lr", float("nan")), ("muon_momentum", 1.0), ("weight_decay", -0.1),
    ("weight_decay", float("inf")), ("beta1", 1.0), ("beta2", -0.1), ("beta2", float("nan")), ("grad_clip", -1.0),
    ("grad_clip", float("nan")), ("decay_fraction", 0.0), ("decay_fraction", 1.5), ("batch_size", 0),
    ("batch_size", 2.5), ("batch_size", True), ("batch_size", "16"), ("block_size", -1), ("grad_accum", 0),
    ("max_iters", 0), ("max_iters", float("inf")), ("max_tokens", 0), ("max_time", 0.0), ("max_time", float("inf")),
    ("patience", 0), ("warmup_iters", -1), ("lr_decay_iters", 0), ("eval_interval", 0), ("eval_windows", 0),
    ("checkpoint_interval", 2.5), ("log_interval", 0), ("sample_tokens", 0), ("seed", -1), ("optimizer", "sgd"),
    ("lr_decay", "linear"), ("lr_schedule", "tokens"), ("dtype", "fp16"), ("device", "gpu"), ("device", "cuda:x"),
    ("preset", "huge"), ("compile", "yes"), ("fsdp", 1), ("data_dir", 3), ("sample_prompt", None), ("model", 3),
]
BAD_MODEL = [
    ("vocab_size", 0), ("hidden_size", 2.5), ("n_layers", 0), ("n_layers", 10**9), ("n_heads", 0), ("n_kv_heads", 3), ("head_dim", 15),
    ("head_dim", "16"), ("intermediate_size", -4), ("sliding_window", 0), ("rope_local_base", float("nan")),
    ("rope_global_base", 0.5), ("query_pre_attn_scalar", 0), ("rms_norm_eps", 0.0), ("max_position_embeddings", 0),
    ("init_std", float("inf")), ("pad_token_id", -1), ("bos_token_id", 300), ("dropout", 1.0),
    ("dropout", float("nan")), ("layer_types", (SLIDING,)), ("layer_types", ("global", FULL)), ("layer_types", "full"),
]


def one_line_error_naming(field, make):
    with pytest.raises(TinyGemmaError) as err:
        make()
    message = str(err.value)
    assert field in message and "\n" not in message, message
    return message


@pytest.mark.parametrize("field,value", BAD_TRAIN)
def test_a_bad_train_value_is_a_one_line_error_naming_the_field(field, value):
    one_line_error_naming(field, lambda: TrainConfig(**{field: value}))


@pytest.mark.parametrize("field,value", BAD_MODEL)
def test_a_bad_model_value_is_a_one_line_error_naming_the_field(field, value):
    one_line_error_naming(field, lambda: ModelConfig(**{**tiny().to_dict(), field: value}))


@pytest.mark.parametrize("assignment,field", [
    ("lr=nan", "lr"), ("lr=inf", "lr"), ("lr=-inf", "lr"), ("batch_size=2.5", "batch_size"), ("batch_size=x", "batch_size"),
    ("beta1=1", "beta1"), ("grad_clip=nan", "grad_clip"), ("compile=maybe", "compile"), ("eval_interval=0", "eval_interval"),
    ("model.n_layers=0", "n_layers"), ("model.head_dim=15", "head_dim"), ("model.n_kv_heads=3", "n_kv_heads"),
    ("model.dropout=nan", "dropout"), ("model.rms_norm_eps=0", "rms_norm_eps"), ("max_tokens=1e400", "max_tokens"),
])
def test_a_bad_set_is_a_one_line_error_naming_the_field(assignment, field):
    one_line_error_naming(field, lambda: apply_overrides(TrainConfig(model=tiny()), [assignment]))


def test_whole_numbers_may_be_written_as_floats_and_ints_stay_exact():
    cfg = apply_overrides(TrainConfig(), ["max_iters=1e6", "max_tokens=5e6", "lr=1"])
    assert (cfg.max_iters, cfg.max_tokens, cfg.lr) == (1_000_000, 5_000_000, 1.0)
    assert type(cfg.max_iters) is int and type(cfg.lr) is float
    assert TrainConfig(max_iters=2.0).max_iters == 2 and type(ModelConfig(rope_local_base=10).rope_local_base) is float


def test_configs_are_frozen_and_overrides_return_new_ones():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0
    assert apply_overrides(cfg, ["lr=1"]).lr == 1.0 and cfg.lr == TrainConfig.lr


@pytest.mark.parametrize("toml,field", [
    ("batch_size = 2.5", "batch_size"), ('lr = "fast"', "lr"), ("compile = 1", "compile"), ("max_iters = true", "max_iters"),
    ("lr = nan", "lr"), ("beta2 = inf", "beta2"), ('[model]\nn_layers = "4"', "n_layers"), ("[model]\nhead_dim = 15", "head_dim"),
    ("model = 3", "model"), ("lerning_rate = 1", "lerning_rate"), ("[model]\nhiden_size = 3", "hiden_size"),
    ("preset = 4", "preset"), ("batch_size = [16]", "batch_size"),
])
def test_a_config_file_with_wrong_types_is_a_one_line_error_naming_the_field(tmp_path, toml, field):
    from tinygemma.runconfig import resolve_config

    path = tmp_path / "run.toml"
    path.write_text(toml + "\n")
    message = one_line_error_naming(field, lambda: resolve_config(None, str(path), vocab_size=256))
    assert "divisible" not in message  # batch_size 2.5 is not a world-size problem


GOOD_MODEL = tiny().to_dict()


@pytest.mark.parametrize("content,field", [
    ({}, "model"), ([], "model"), ("tiny", "model"), (3, "model"), (None, "model"), ({"model": []}, "model"),
    ({"model": {k: v for k, v in GOOD_MODEL.items() if k != "n_heads"}}, "n_heads"),
    ({"model": {**GOOD_MODEL, "n_layers": "2"}}, "n_layers"), ({"model": {**GOOD_MODEL, "hidden_size": None}}, "hidden_size"),
    ({"model": {**GOOD_MODEL, "vocab_size": -5}}, "vocab_size"), ({"model": {**GOOD_MODEL, "colour": 1}}, "colour"),
    ({"model": GOOD_MODEL, "tokenizer": []}, "tokenizer"), ({"model": GOOD_MODEL, "tokenizer": {"path": "t.json"}}, "name"),
    ({"model": GOOD_MODEL, "tokenizer": {"name": 3}}, "tokenizer.name"),
    ({"model": GOOD_MODEL, "tokenizer": {"name": "gpt2", "bos_id": "2"}}, "tokenizer.bos_id"),
])
def test_a_model_folders_config_json_is_checked_against_its_schema(tmp_path, content, field):
    from tinygemma.checkpoint import read_config

    (tmp_path / "config.json").write_text(json.dumps(content))
    one_line_error_naming(field, lambda: read_config(tmp_path))


def test_a_bad_config_json_is_exit_2_without_a_traceback_from_the_cli(tmp_path, capsys):
    from tinygemma.checkpoint import BEST_NAME, save_config, save_weights
    from tinygemma.cli import main
    from tinygemma.model import Gemma3Model

    save_weights(Gemma3Model(tiny()).state_dict(), tmp_path / BEST_NAME)
    save_config(tmp_path, tiny(), {"name": "gpt2"})
    assert read_config_model(tmp_path) == tiny()
    for content in ({}, [], 3, {"model": {**GOOD_MODEL, "n_layers": 2.5}}):
        (tmp_path / "config.json").write_text(json.dumps(content))
        assert main(["generate", "--checkpoint", str(tmp_path), "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "config.json" in err


def read_config_model(folder):
    from tinygemma.checkpoint import read_config

    return read_config(folder)["model"]
