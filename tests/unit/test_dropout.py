"""Optional dropout (ModelConfig.dropout, not in Gemma 3): training-only, and off by default."""

import dataclasses

import pytest
import torch

from tinygemma.config import ModelConfig, apply_overrides
from tinygemma.errors import TinyGemmaError
from tinygemma.model import Gemma3Model


def _pair(cfg, p):
    """A dropout-0 model and a dropout-p model with the same weights."""
    plain = Gemma3Model(cfg)
    dropped = Gemma3Model(dataclasses.replace(cfg, dropout=p))
    dropped.load_state_dict(plain.state_dict())
    return plain, dropped


def test_default_dropout_is_zero_and_train_mode_is_deterministic(tiny_cfg):
    assert tiny_cfg.dropout == 0.0
    m = Gemma3Model(tiny_cfg)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 12))  # 12 > window 8: the sliding mask path too
    m.train()
    a, b = m(x)[0], m(x)[0]
    m.eval()
    assert torch.equal(a, b) and torch.equal(a, m(x)[0])  # bit-identical: dropout 0 is never applied


def test_dropout_changes_training_outputs_only(tiny_cfg):
    plain, dropped = _pair(tiny_cfg, 0.3)
    x = torch.randint(0, tiny_cfg.vocab_size, (2, 12))
    plain.eval(), dropped.eval()
    assert torch.equal(plain(x)[0], dropped(x)[0])  # eval: identity
    dropped.train()
    torch.manual_seed(1)
    a = dropped(x)[0]
    torch.manual_seed(2)
    b = dropped(x)[0]
    assert not torch.allclose(a, plain(x)[0]) and not torch.allclose(a, b)
    _, loss = dropped(x, x)  # the chunked-loss path trains through it too
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in dropped.parameters())


def test_dropout_is_validated_and_settable():
    with pytest.raises(TinyGemmaError, match="dropout"):
        ModelConfig(dropout=1.0)
    cfg = apply_overrides(ModelConfig(), ["dropout=0.1"])
    assert cfg.dropout == 0.1
    assert ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "dropout"}).dropout == 0.0


def test_export_leaves_dropout_behind(tiny_cfg):
    """Training-only: the HF config of a model trained with dropout describes the eval-mode model."""
    from tinygemma.hf import from_hf_config, to_hf_config

    hf = to_hf_config(dataclasses.replace(tiny_cfg, dropout=0.2))
    assert hf["attention_dropout"] == 0.0
    back = from_hf_config(hf)
    assert back.dropout == 0.0 and back.hidden_size == tiny_cfg.hidden_size
