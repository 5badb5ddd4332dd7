"""tinygemma: train Gemma 3 language models from scratch, on a laptop CPU or a GPU cluster."""

from tinygemma.config import ModelConfig, model_config, model_preset
from tinygemma.model import Gemma3Model

__version__ = "0.1.0"
__all__ = ["Gemma3Model", "ModelConfig", "model_config", "model_preset", "__version__"]
