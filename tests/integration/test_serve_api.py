"""`tinygemma serve` through the official openai client and raw HTTP: completions, streaming, seeds
beside other requests, stops, the context cut, a client that goes away, every bad input, key, 413, 429,
and the process: a signal stops it cleanly, a port in use is a one-line error."""

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai
import pytest

from tinygemma.generate import encode_prompt
from tinygemma.tokenizer import load_tokenizer

pytestmark = pytest.mark.slow


def client(server, key="none"):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


def post(server, body, headers=None, path="/v1/completions"):
    """Raw POST -> (status, headers, parsed JSON body)."""
    conn = http.client.HTTPConnection(urlsplit(server.url).hostname, server.port, timeout=120)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    status, hdrs, payload = r.status, r.headers, r.read()  # headers: case-insensitive
    conn.close()
    return status, hdrs, json.loads(payload)


def test_completion_whole_and_streamed_agree(server):
    c = client(server)
    whole = c.completions.create(model="story-model", prompt="Once upon a time", max_tokens=24, seed=5, temperature=0.9)
    choice = whole.choices[0]
    assert whole.object == "text_completion" and whole.model == "story-model" and choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 24 and whole.usage.prompt_tokens == 5 and whole.usage.total_tokens == 29
    assert len(choice.text) > 24
    chunks = list(c.completions.create(model="x", prompt="Once upon a time", max_tokens=24, seed=5, temperature=0.9,
                                       stream=True, stream_options={"include_usage": True}))
    texts = [ch.choices[0].text for ch in chunks if ch.choices]
    assert len(texts) >= 10 and "".join(texts) == choice.text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24 and not chunks[-1].choices


def test_a_seeded_request_writes_the_same_alone_or_beside_others(server):
    c = client(server)
    ask = dict(model="x", prompt="The dog ran", max_tokens=40, seed=1234, temperature=1.0, top_p=0.9)
    alone = c.completions.create(**ask).choices[0].text
    others = [dict(model="x", prompt=p, max_tokens=m, temperature=t, extra_body={"top_k": k})  # top_k: not OpenAI's
              for p, m, t, k in (("A cat", 60, 0.7, 5), ("Tom and Sue", 80, 1.2, None), ("Hi", 20, 0, None))]
    with ThreadPoolExecutor(8) as pool:
        rest = [pool.submit(c.completions.create, **o) for o in others * 2]
        beside = [pool.submit(c.completions.create, **ask) for _ in range(2)]
        assert all(f.result().choices[0].finish_reason == "length" for f in rest)
        assert [f.result().choices[0].text for f in beside] == [alone, alone]
    assert server.health()["finished"].get("error", 0) == 0


def test_prompt_lists_and_n_give_prompt_major_choices(server):
    r = client(server).completions.create(model="x", prompt=["One day", "A bird"], n=2, max_tokens=8, seed=3)
    assert [ch.index for ch in r.choices] == [0, 1, 2, 3] and r.usage.completion_tokens == 32
    assert r.choices[0].text != r.choices[1].text  # choice i is seeded with seed + i
    alone = client(server).completions.create(model="x", prompt="A bird", max_tokens=8, seed=5)
    assert alone.choices[0].text == r.choices[2].text


def test_a_stop_string_ends_the_text_before_it(server):
    c = client(server)
    free = c.completions.create(model="x", prompt="Lily had a ball", max_tokens=30, temperature=0).choices[0].text
    stop = free[len(free) // 2 : len(free) // 2 + 4]
    r = c.completions.create(model="x", prompt="Lily had a ball", max_tokens=30, temperature=0, stop=[stop, "@@@"])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == free[: free.index(stop)]
    assert r.usage.completion_tokens < 30


def test_a_prompt_longer_than_the_context_keeps_its_last_tokens(server):
    tok = load_tokenizer("gpt2")
    text = "The sun came up over the hill and the birds sang. " * 250
    ids = encode_prompt(tok, text)
    assert len(ids) > 2048
    r = client(server).completions.create(model="x", prompt=text, max_tokens=48, seed=9)
    assert r.usage.prompt_tokens == 2048 - 48 and r.usage.model_extra["prompt_tokens_truncated"] == len(ids) - 2000
    same = client(server).completions.create(model="x", prompt=ids[-2000:], max_tokens=48, seed=9)
    assert same.choices[0].text == r.choices[0].text and same.usage.model_extra["prompt_tokens_truncated"] == 0


def test_models_health_and_no_chat_endpoint(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["story-model"]
    h = server.health()
    assert h["status"] == "ok" and h["rows"] == 32 and h["capacity"] == 96
    status, _, body = post(server, {"model": "x", "messages": [{"role": "user", "content": "hi"}]},
                           path="/v1/chat/completions")
    assert status == 404 and "no chat endpoint" in body["error"]["message"]


def test_a_client_that_goes_away_frees_its_row(server):
    before = server.health()["finished"].get("cancelled", 0)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "Once", "max_tokens": 2000, "stream": True}),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.read(7) == b"data: {"
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.time() + 30
    while time.time() < deadline and server.health()["finished"].get("cancelled", 0) == before:
        time.sleep(0.05)
    h = server.health()
    assert h["finished"].get("cancelled", 0) == before + 1 and h["active"] == 0


BAD = [  # (body, param named in the error, or None)
    (b'{"prompt": "x",', None),  # not JSON
    (b"[1, 2]", None),  # not an object
    ({"max_tokens": 5}, "prompt"),  # no prompt
    ({"prompt": 5}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[]]}, "prompt"),
    ({"prompt": [[999999]]}, "prompt"),  # a token id outside the vocabulary
    ({"prompt": ["a"] * 17}, "prompt"),
    ({"prompt": ["a"] * 4, "n": 5}, "prompt"),  # 20 sequences
    ({"prompt": "x", "n": 17}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 1.5}, "max_tokens"),
    ({"prompt": "x", "max_tokens": -1}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 10**12}, "max_tokens"),
    ({"prompt": "x", "max_tokens": 2048}, "max_tokens"),  # the context is 2048: at most 2047 new tokens
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": "x", "top_p": 0}, "top_p"),
    ({"prompt": "x", "top_k": 0}, "top_k"),
    ({"prompt": "x", "stream": "yes"}, "stream"),
    ({"prompt": "x", "seed": 2**70}, "seed"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "x", "stop": [""]}, "stop"),
    ({"prompt": "x", "echo": True}, "echo"),
    ({"prompt": "x", "logprobs": 2}, "logprobs"),
]


@pytest.mark.parametrize("body,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_request_gets_an_openai_error_and_the_server_goes_on(server, body, param):
    status, _, answer = post(server, body)
    assert status == 400 and set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error" and answer["error"]["param"] == param
    assert answer["error"]["message"]
    status, _, ok = post(server, {"prompt": "x", "max_tokens": 2, "temperature": 0, "unknown_field": [1, {"a": 2}]})
    assert status == 200 and ok["usage"]["completion_tokens"] == 2  # unknown fields are ignored


def test_a_body_past_the_limit_gets_413(server):
    status, _, answer = post(server, json.dumps({"prompt": "x" * (2 << 20)}).encode())
    assert status == 413 and answer["error"]["code"] == "request_too_large"
    assert server.health()["status"] == "ok"


def test_an_api_key_is_required_when_set_and_a_full_server_says_429(serve_model, server_process):
    with server_process(serve_model, "--slots", 1, "--queue", 1, "--context", 2048, env={"TINYGEMMA_API_KEY": "s3cret"}) as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, hdrs, answer = post(s, {"prompt": "x"}, headers)
            assert status == 401 and answer["error"]["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            client(s, key="wrong").models.list()
        assert client(s, key="s3cret").completions.create(model="x", prompt="x", max_tokens=3).usage.completion_tokens == 3
        assert s.health()["status"] == "ok"  # /health and / need no key
        _fill_and_overflow(s)


def _fill_and_overflow(s):
    """One slot and one place in the line: two long requests fill them, a third gets 429 with Retry-After."""
    auth = {"Authorization": "Bearer s3cret"}
    long = {"prompt": "x", "max_tokens": 2000, "temperature": 0}
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, s, long, auth) for _ in range(2)]
        deadline = time.time() + 30
        while time.time() < deadline and s.health()["active"] + s.health()["waiting"] < 2:
            time.sleep(0.02)
        status, hdrs, answer = post(s, {"prompt": "x", "max_tokens": 2}, auth)
        assert status == 429 and hdrs["Retry-After"] == "1" and answer["error"]["code"] == "queue_full"
        assert [f.result()[0] for f in held] == [200, 200]
    assert post(s, {"prompt": "x", "max_tokens": 2}, auth)[0] == 200


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_server_and_its_engine(serve_model, server_process, sig):
    """The engine's loop runs in the main thread and uvicorn in another: a signal must end both, cleanly."""
    with server_process(serve_model, "--slots", 2) as s:
        assert client(s).completions.create(model="x", prompt="x", max_tokens=3).usage.completion_tokens == 3
        s.proc.send_signal(sig)
        assert s.proc.wait(20) == 0
        assert "Application shutdown complete" in s.proc.stdout.read()


def test_a_port_in_use_is_a_one_line_error(serve_model, server_process):
    with server_process(serve_model) as s:
        second = subprocess.run([sys.executable, "-m", "tinygemma", "serve", "--checkpoint", str(serve_model),
                                 "--device", "cpu", "--port", str(s.port)], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines()[-1] == (
            f"error: could not serve on 127.0.0.1:{s.port} (uvicorn's log above says why; "
            "is the port already in use? choose another with --port)")
        assert s.health()["status"] == "ok"  # the first server is untouched
