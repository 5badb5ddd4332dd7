import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use tiny models, which are overhead-bound: one thread is faster and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sharp_tiny_model():
    """A tiny model (vocab 257) with sharper, non-trivial distributions than the init's, for decoding tests."""
    from tinygemma.config import tiny
    from tinygemma.model import Gemma3Model

    torch.manual_seed(0)
    m = Gemma3Model(tiny(vocab_size=257)).eval()
    with torch.no_grad():  # sharper, non-trivial distributions than the init's
        for name, p in m.named_parameters():
            p.normal_(0.0, 0.5 if name.endswith("norm.weight") else 0.15)
    return m
