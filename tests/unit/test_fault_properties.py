"""Property-based fault tests (hypothesis): the document readers and the config parsers, fed random
bytes, random UTF-8 and random configs, either work or raise TinyGemmaError; never anything else."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinygemma import checkpoint
from tinygemma.config import TrainConfig, apply_overrides, parse_assignment, tiny
from tinygemma.data import read_meta
from tinygemma.documents import Separator, Task, parse_text
from tinygemma.errors import TinyGemmaError
from tinygemma.runconfig import resolve_config
from tinygemma.sources import SourceOptions, iter_pieces

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = [".txt", ".jsonl", ".json", ".parquet", ".md"]
DOC_SPLITS = ["auto", "line", "blank", "<|endoftext|>", "\\n\\n", "\\u", "", "x"]


def works_or_refuses(fn, *args, **kw):
    """fn's result, or None when it raised TinyGemmaError; any other exception fails the test."""
    try:
        return fn(*args, **kw)
    except TinyGemmaError as e:
        assert "\n" not in str(e), str(e)
        return None


# ---------------------------------------------------------------- the document reader
@SETTINGS
@given(data=st.binary(max_size=3000), suffix=st.sampled_from(SUFFIXES), doc_split=st.sampled_from(DOC_SPLITS),
       segment=st.integers(16, 200), chunk=st.integers(1, 500))
def test_random_bytes_in_any_source_file_work_or_refuse(data, suffix, doc_split, segment, chunk):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"source{suffix}"
        path.write_bytes(data)
        opts = works_or_refuses(SourceOptions, doc_split=doc_split, segment_bytes=segment, chunk_bytes=chunk)
        if opts is not None:
            pieces = works_or_refuses(lambda: list(iter_pieces(str(path), "train", opts)))
            assert pieces is None or all(isinstance(p.text, str) for p in pieces)


@SETTINGS
@given(text=st.text(max_size=2000), segment=st.integers(16, 300))
def test_random_utf8_as_one_document_keeps_every_character(text, segment):
    """One document (no separator): the pieces, joined, are the text without its outer whitespace."""
    pieces, replaced = parse_text(Task("text", text.encode("utf-8"), "t", Separator("none")), segment)
    assert replaced == 0
    assert "".join(p.text for p in pieces) == text.strip()
    assert all(len(p.text.encode("utf-8")) <= segment for p in pieces)
    if pieces:
        assert pieces[0].opens and pieces[-1].closes


@SETTINGS
@given(text=st.text(max_size=2000), doc_split=st.sampled_from(["line", "blank", "<|endoftext|>"]),
       segment=st.integers(16, 300))
def test_random_utf8_split_into_documents_loses_no_text(text, doc_split, segment):
    """Every non-space character ends up in a piece, except those of the separators themselves."""
    sep = Separator(doc_split) if doc_split in ("line", "blank") else Separator("literal", doc_split)
    pieces, _ = parse_text(Task("text", text.encode("utf-8"), "t", sep), segment)
    kept = "".join(p.text for p in pieces)
    expected = text.replace(doc_split, "") if sep.kind == "literal" else text
    assert "".join(kept.split()) == "".join(expected.split())


# ---------------------------------------------------------------- configs
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=12))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)
TRAIN_KEYS = sorted(TrainConfig.__dataclass_fields__) + ["lerning_rate", "model"]
MODEL_KEYS = ["vocab_size", "hidden_size", "n_layers", "n_heads", "head_dim", "layer_types", "dropout", "rms_norm_eps"]


def toml_value(v) -> str | None:
    """A TOML literal for v (None where TOML has none)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v) if -2**63 <= v < 2**63 else None
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        items = [toml_value(x) for x in v]
        return None if None in items else "[" + ", ".join(items) + "]"
    return None


@SETTINGS
@given(top=st.dictionaries(st.sampled_from(TRAIN_KEYS), VALUES, max_size=5),
       model=st.dictionaries(st.sampled_from(MODEL_KEYS), VALUES, max_size=4))
def test_random_config_files_resolve_or_refuse(top, model):
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items() if k != "model" and toml_value(v) is not None]
    lines += ["[model]"] + [f"{k} = {toml_value(v)}" for k, v in model.items() if toml_value(v) is not None]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_text("\n".join(lines) + "\n")
        cfg = works_or_refuses(resolve_config, "tiny", str(path), vocab_size=256)
    assert cfg is None or (cfg.model is not None and cfg.batch_size >= 1 and math.isfinite(cfg.lr))


@SETTINGS
@given(text=st.text(max_size=300))
def test_random_text_as_a_config_file_resolves_or_refuses(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.toml"
        path.write_text(text)
        works_or_refuses(resolve_config, "tiny", str(path), vocab_size=256)


@SETTINGS
@given(key=st.sampled_from(TRAIN_KEYS + [f"model.{k}" for k in MODEL_KEYS] + ["model.nope", "a.b.c", ""]),
       raw=st.one_of(st.text(max_size=20), st.sampled_from(["nan", "inf", "-1", "0", "2.5", "1e400", "[1]", "none"])))
def test_random_set_assignments_apply_or_refuse(key, raw):
    def apply():
        cfg = resolve_config("tiny", vocab_size=256)
        return apply_overrides(cfg, [f"{key}={raw}"])

    cfg = works_or_refuses(apply)
    if cfg is not None:
        parse_assignment(TrainConfig, f"{key}={raw}")  # what applied also parses on its own


JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                                     st.text(max_size=12)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                           max_leaves=10)


@SETTINGS
@given(base=st.sampled_from(["nothing", "model", "meta"]), change=st.dictionaries(st.text(max_size=12), JSON_VALUES,
                                                                                   max_size=3),
       whole=st.one_of(st.none(), JSON_VALUES))
def test_random_config_json_and_meta_json_read_or_refuse(base, change, whole):
    """config.json and meta.json from random JSON, or from a valid one with random fields changed."""
    valid_model = {"model": tiny().to_dict(), "tokenizer": {"name": "gpt2", "vocab_size": 256, "eot_id": 0}}
    valid_meta = {"format_version": 2, "tokenizer": {"name": "gpt2", "vocab_size": 256, "eot_id": 0, "bos_id": None},
                  "dtype": "uint16", "train": {"tokens": 1, "documents": 1, "bytes": 1, "sha256": ""},
                  "validation": {"tokens": 1, "documents": 1, "bytes": 1, "sha256": ""}}
    doc = whole if base == "nothing" else {**(valid_model if base == "model" else valid_meta), **change}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(doc))
        (Path(folder) / "meta.json").write_text(json.dumps(doc))
        works_or_refuses(checkpoint.read_config, folder)
        works_or_refuses(read_meta, folder)


def test_the_property_tests_can_fail():
    """works_or_refuses lets anything but TinyGemmaError through, and refuses multi-line messages."""
    with pytest.raises(ZeroDivisionError):
        works_or_refuses(lambda: 1 / 0)
    with pytest.raises(AssertionError):
        works_or_refuses(lambda: (_ for _ in ()).throw(TinyGemmaError("two\nlines")))
