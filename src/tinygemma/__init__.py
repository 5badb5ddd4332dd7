"""tinygemma: train Gemma 3 language models from scratch, on a laptop CPU or a GPU cluster."""

from tinygemma.config import ModelConfig, model_config, model_preset

__version__ = "0.1.0"
__all__ = ["Gemma3Model", "ModelConfig", "model_config", "model_preset", "__version__"]


def __getattr__(name: str):
    # The model (and torch, ~2 s and ~200 MB) is imported on first use, so `tinygemma --help`
    # and `tinygemma prepare` (whose forked workers would each carry torch) stay fast and light.
    if name == "Gemma3Model":
        from tinygemma.model import Gemma3Model

        return Gemma3Model
    raise AttributeError(f"module 'tinygemma' has no attribute {name!r}")
