import pytest
import torch

from tinygemma.config import tiny


@pytest.fixture
def tiny_cfg():
    """2 layers (sliding + full), d 64, window 8, vocab 256: unit tests run in well under a second."""
    return tiny()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
