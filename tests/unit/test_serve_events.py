"""The server's SSE chunks: text events written from a head encoded once are the JSON OpenAI's
clients parse, the same as encoding each chunk whole."""

import json

from tinygemma.serve import _choice, _sse, _text_events


def test_text_events_are_the_chunks_encoded_whole():
    head = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": 'a "quoted" model'}
    events = [(0, 'She said "hi"\n\nThe end.', None), (2, "caf\u00e9 \u2603", None), (1, "", "length"), (0, "", "stop")]
    got = _text_events(head)(events)
    assert got == b"".join(_sse({**head, "choices": [_choice(i, piece, reason)]}) for i, piece, reason in events)
    chunks = [json.loads(line.removeprefix("data: ")) for line in got.decode().split("\n\n") if line]
    assert [(c["choices"][0]["index"], c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks] == events
    assert all(c["model"] == head["model"] for c in chunks)
    assert _text_events(head)([]) == b""
