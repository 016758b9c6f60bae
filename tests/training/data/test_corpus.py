"""Corpus sources: local text/jsonl/csv/parquet, in-memory datasets, the Hub path, python-stdlib, errors."""

from __future__ import annotations

import json
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict

from training.data.corpus import (
    DataArguments,
    is_validation,
    load_text_splits,
    prepare_datasets,
    stdlib_files,
)

ROWS = [{"id": i, "body": f"row {i}: " + "lorem ipsum " * (i % 7), "lang": "en"} for i in range(200)]

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


def _texts(splits, name):
    return list(splits[name]["text"])


def test_txt_file_is_cut_by_characters(tmp_path):
    text = "".join(f"line {i} of a single document\n" for i in range(400))
    f = tmp_path / "book.txt"
    f.write_text(text, encoding="utf-8")
    splits = load_text_splits(DataArguments(dataset=str(f), validation_fraction=0.1))
    train, val = _texts(splits, "train"), _texts(splits, "validation")
    assert train and val
    assert "".join(train + val) == text  # nothing lost, nothing repeated
    assert val[0].startswith("line ")  # cut at a line start
    assert abs(len(val[0]) - 0.1 * len(text)) < 40


def test_folder_one_document_per_file_split_by_path(tmp_path):
    docs = {f"pkg{i % 3}/mod{i}.py": f"x = {i}\n" * (i + 1) for i in range(60)}
    docs["notes/readme.md"] = "# notes\n"
    docs["a.txt"] = "plain text\n"
    for rel, text in docs.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    (tmp_path / ".hidden.txt").write_text("hidden")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    splits = load_text_splits(DataArguments(dataset=str(tmp_path), validation_fraction=0.2))
    expected_val = sorted(t for r, t in docs.items() if is_validation(r, 0.2))
    expected_train = sorted(t for r, t in docs.items() if not is_validation(r, 0.2))
    assert sorted(_texts(splits, "validation")) == expected_val and expected_val
    assert sorted(_texts(splits, "train")) == expected_train
    assert splits["train"].column_names == ["text"]


def test_sample_by_paragraph_and_line(tmp_path):
    f = tmp_path / "p.md"
    f.write_text("para one\nstill one\n\n\npara two\n\npara three\n", encoding="utf-8")
    args = DataArguments(dataset=str(f), validation_fraction=0.0, sample_by="paragraph")
    assert _texts(load_text_splits(args), "train") == ["para one\nstill one\n", "para two\n", "para three\n"]
    args.sample_by = "line"
    assert _texts(load_text_splits(args), "train") == ["para one", "still one", "para two", "para three"]


def _write_structured(tmp_path, kind):
    if kind == "jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    elif kind == "json":
        p = tmp_path / "d.json"
        p.write_text(json.dumps(ROWS), encoding="utf-8")
    elif kind == "csv":
        p = tmp_path / "d.csv"
        p.write_text("id,body,lang\n" + "".join(f'{r["id"]},"{r["body"]}",{r["lang"]}\n' for r in ROWS))
    else:
        p = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), p)
    return p


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv", "parquet"])
def test_structured_files_with_a_named_column(tmp_path, kind):
    p = _write_structured(tmp_path, kind)
    splits = load_text_splits(DataArguments(dataset=str(p), text_column="body", validation_fraction=0.2))
    train, val = _texts(splits, "train"), _texts(splits, "validation")
    assert sorted(train + val) == sorted(r["body"] for r in ROWS)
    assert val == [r["body"] for r in ROWS if is_validation(r["body"], 0.2)]  # by content hash, in order
    assert splits["validation"].column_names == ["text"]


def test_missing_and_ambiguous_columns_list_the_columns(tmp_path):
    p = _write_structured(tmp_path, "jsonl")
    with pytest.raises(ValueError, match=r"no column 'content'.*\['id', 'body', 'lang'\].*--text-column"):
        load_text_splits(DataArguments(dataset=str(p), text_column="content"))
    with pytest.raises(ValueError, match=r"no 'text' column and 2 string columns.*--text-column"):
        load_text_splits(DataArguments(dataset=str(p)))
    with pytest.raises(ValueError, match=r"column 'id'.*not text"):
        load_text_splits(DataArguments(dataset=str(p), text_column="id"))


def test_single_string_column_is_found(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps({"n": i, "content": f"doc {i}"}) + "\n" for i in range(20)))
    splits = load_text_splits(DataArguments(dataset=str(p), validation_fraction=0.3))
    assert sorted(_texts(splits, "train") + _texts(splits, "validation")) == sorted(f"doc {i}" for i in range(20))


def test_in_memory_dataset_and_dataset_dict():
    ds = Dataset.from_dict({"content": [f"document number {i}" for i in range(100)], "label": [0] * 100})
    splits = load_text_splits(DataArguments(dataset=ds, text_column="content", validation_fraction=0.1))
    assert len(splits["train"]) + len(splits["validation"]) == 100
    assert not set(_texts(splits, "train")) & set(_texts(splits, "validation"))
    dd = DatasetDict({"train": Dataset.from_dict({"text": ["a", "b", "c"]}),
                      "validation": Dataset.from_dict({"text": ["v"]})})
    splits = load_text_splits(DataArguments(dataset=dd))
    assert _texts(splits, "train") == ["a", "b", "c"] and _texts(splits, "validation") == ["v"]


def test_max_documents_takes_a_fixed_sample():
    ds = Dataset.from_dict({"text": [f"doc {i}" for i in range(100)]})
    splits = load_text_splits(DataArguments(dataset=ds, max_documents=30))
    assert len(splits["train"]) + len(splits["validation"]) == 30


def test_hub_dataset_arguments_are_passed_through(monkeypatch):
    calls = []

    def fake_load_dataset(path, split=None, name=None, revision=None, streaming=False):
        calls.append((path, split, name, revision, streaming))
        return Dataset.from_dict({"story": [f"{split} story {i}" for i in range(40)], "n": list(range(40))})

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    args = DataArguments(dataset="someone/stories", dataset_config="small", split="train",
                         validation_split="test", revision="v1.0", text_column="story")
    splits = load_text_splits(args)
    assert calls == [("someone/stories", "train", "small", "v1.0", False),
                     ("someone/stories", "test", "small", "v1.0", False)]
    assert _texts(splits, "validation")[0] == "test story 0" and len(splits["train"]) == 40


def test_missing_local_path_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_text_splits(DataArguments(dataset="./does/not/exist.txt"))


def test_non_utf8_file_is_named(tmp_path):
    (tmp_path / "good.txt").write_text("fine\n")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not UTF-8.*offset 3"):
        load_text_splits(DataArguments(dataset=str(tmp_path)))
    csv = tmp_path / "x" / "d.csv"
    csv.parent.mkdir()
    csv.write_bytes("text\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"d\.csv is not UTF-8"):
        load_text_splits(DataArguments(dataset=str(csv)))


def test_empty_corpus_and_empty_folder(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        prepare_datasets(DataArguments(dataset=str(tmp_path / "empty.txt")), block_size=8, vocab_size=300)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="no corpus files"):
        load_text_splits(DataArguments(dataset=str(tmp_path / "sub")))


def test_mixed_folder_is_rejected(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(ValueError, match="mixes file kinds"):
        load_text_splits(DataArguments(dataset=str(tmp_path)))


def test_streaming_folder_equals_in_memory(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i}.txt").write_text(f"text of file {i}\n" * (i + 1))
    mem = load_text_splits(DataArguments(dataset=str(tmp_path), validation_fraction=0.2))
    st = load_text_splits(DataArguments(dataset=str(tmp_path), validation_fraction=0.2, streaming=True))
    for name in ("train", "validation"):
        assert [r["text"] for r in st[name]] == _texts(mem, name)


def test_data_arguments_cli_round_trip():
    from training.shared.arguments import dataclass_parser, from_namespace

    parser = dataclass_parser(DataArguments)
    assert all(a.help for a in parser._actions if a.dest != "help")
    ns = parser.parse_args(["--dataset", "x.txt", "--validation-fraction", "0.2", "--max-documents", "5",
                            "--streaming", "--num-proc", "2"])
    args = from_namespace(DataArguments, ns)
    assert (args.dataset, args.validation_fraction, args.max_documents, args.streaming, args.num_proc) == \
        ("x.txt", 0.2, 5, True, 2)
    assert from_namespace(DataArguments, parser.parse_args([])) == DataArguments()
    assert from_namespace(DataArguments, parser.parse_args(["--streaming", "--no-streaming"])).streaming is False


def test_bad_arguments():
    with pytest.raises(ValueError, match="validation_fraction"):
        load_text_splits(DataArguments(validation_fraction=1.5))
    with pytest.raises(ValueError, match="max_documents"):
        load_text_splits(DataArguments(max_documents=0))


# ------------------------------------------------------------------------------------- python-stdlib


def test_python_stdlib_corpus_and_fixed_split():
    root, rel = stdlib_files()
    assert not any("site-packages" in r for r in rel)
    splits = load_text_splits(DataArguments())  # the default source
    train, val = _texts(splits, "train"), _texts(splits, "validation")
    assert len(train) + len(val) > 500  # ~1790 files on CPython 3.11
    assert 0 < len(val) < 0.15 * len(train)

    # The split is a function of the relative path alone: recompute it from the files.
    def read(r):
        try:
            with open(os.path.join(root, r), encoding="utf-8") as fh:
                return fh.read()
        except UnicodeDecodeError:
            return None

    by_path = {r: read(r) for r in rel}
    expected_val = sorted(t for r, t in by_path.items() if t is not None and is_validation(r, 0.05))
    assert sorted(val) == expected_val
    # Validation documents never appear in training, except texts that several files share (e.g. empty).
    copies = Counter(t for t in by_path.values() if t is not None)
    shared = set(train) & set(val)
    assert all(copies[t] > 1 for t in shared)


def test_python_stdlib_is_the_same_on_a_second_load():
    a = load_text_splits(DataArguments(max_documents=50))
    b = load_text_splits(DataArguments(max_documents=50))
    assert _texts(a, "validation") == _texts(b, "validation") and _texts(a, "train") == _texts(b, "train")
    assert a["train"]._fingerprint == b["train"]._fingerprint  # served from the datasets cache


def test_python_stdlib_streaming_blocks_equal_in_memory(tiny_tokenizer):
    args = DataArguments(max_documents=25)
    mem, _, stats = prepare_datasets(args, block_size=64, tokenizer=tiny_tokenizer, vocab_size=512)
    st, _, _ = prepare_datasets(DataArguments(max_documents=25, streaming=True), block_size=64,
                                tokenizer=tiny_tokenizer, vocab_size=512)
    for name in ("train", "validation"):
        assert [r["input_ids"] for r in st[name]] == mem[name]["input_ids"]
        assert stats[name]["blocks"] == len(mem[name]) > 0

