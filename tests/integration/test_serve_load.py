"""A bounded load test: 32 concurrent streaming clients, 96 requests, no errors, every stream ends with
[DONE], the requests shared decoding steps, and /health still answers."""

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS_EACH, MAX_TOKENS = 32, 3, 24


def stream_one(port: int, i: int) -> tuple[int, list[str]]:
    """One streamed completion over raw HTTP -> (completion tokens from usage, finish reasons); asserts the SSE shape."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"prompt": f"Story {i}:", "max_tokens": MAX_TOKENS, "stream": True, "seed": i,
            "stream_options": {"include_usage": True}}
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type").startswith("text/event-stream")
    events = [e for e in r.read().decode().split("\n\n") if e]
    conn.close()
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    reasons = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    return chunks[-1]["usage"]["completion_tokens"], reasons


def test_32_streaming_clients_at_once(server):
    busiest, stop = [0], threading.Event()

    def watch():
        while not stop.is_set():
            busiest[0] = max(busiest[0], server.health()["active"])
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(lambda i: stream_one(server.port, i), range(CLIENTS * REQUESTS_EACH)))
    finally:
        stop.set()
        watcher.join()
    assert len(results) == CLIENTS * REQUESTS_EACH
    assert all(n == MAX_TOKENS and reasons == ["length"] for n, reasons in results)
    assert busiest[0] >= 8  # requests were written side by side in the same steps
    h = server.health()
    assert h["status"] == "ok" and h["active"] == 0 and h["waiting"] == 0 and h["finished"].get("error", 0) == 0
