import pytest

from tinygemma.config import FULL, SLIDING, TrainConfig, apply_overrides, model_preset, tiny
from tinygemma.errors import TinyGemmaError


def test_changing_depth_rederives_layer_types():
    cfg = apply_overrides(tiny(), ["n_layers=7"])
    assert cfg.layer_types == (SLIDING,) * 5 + (FULL, SLIDING)


def test_layer_types_set_after_depth_are_kept():
    cfg = apply_overrides(tiny(), ["n_layers=3", f"layer_types={FULL},{SLIDING},{FULL}"])
    assert cfg.layer_types == (FULL, SLIDING, FULL)


def test_nested_model_override_is_validated():
    cfg = TrainConfig(model=model_preset("tiny"))
    apply_overrides(cfg, ["model.n_layers=4", "lr=3e-4"])
    assert cfg.model.n_layers == len(cfg.model.layer_types) == 4 and cfg.lr == 3e-4
    with pytest.raises(TinyGemmaError, match="n_heads=3 must be a multiple of n_kv_heads=2"):
        apply_overrides(cfg, ["model.n_kv_heads=2", "model.n_heads=3"])


def test_unknown_key_suggests_close_match():
    with pytest.raises(TinyGemmaError, match="did you mean hidden_size"):
        apply_overrides(tiny(), ["hiden_size=8"])
