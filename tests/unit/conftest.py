import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Unit tests use tiny models, which are overhead-bound: one thread is faster and immune to a busy machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
