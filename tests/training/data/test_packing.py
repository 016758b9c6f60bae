"""Packing: block shapes, lossless concatenation, stride overlaps, padding, streaming parity, cache reuse."""

from __future__ import annotations

import os

import numpy as np
import pytest
from datasets import Dataset

from tests.training.conftest import reference_stream
from training.data.corpus import DataArguments, prepare_datasets
from training.data.packing import block_starts, check_tokenizer_fits, pack_dataset, pack_with_stats

DOCS = [f"def f{i}(x):\n    return x * {i} + {i * i}\n" for i in range(60)] + ["", "héllo 😀 日本"]

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


@pytest.fixture(scope="module")
def ds():
    return Dataset.from_dict({"text": DOCS})


@pytest.fixture(scope="module")
def stream(tiny_tokenizer):
    return reference_stream(tiny_tokenizer, DOCS)


def _ids(blocks) -> np.ndarray:
    return np.array(blocks["input_ids"])


@pytest.mark.parametrize("block_size", [8, 33])
def test_blocks_concatenate_to_the_documents_joined_with_eos(ds, tiny_tokenizer, stream, block_size):
    blocks = pack_dataset(ds, tiny_tokenizer, block_size)
    ids = _ids(blocks)
    assert ids.shape == (len(stream) // block_size, block_size)
    assert blocks.column_names == ["input_ids"]
    assert ids.ravel().tolist() == stream[: ids.size]  # nothing lost or duplicated but the remainder
    assert len(stream) - ids.size < block_size


def test_no_token_lost_across_map_batches(tiny_tokenizer):
    docs = [f"x{i} = {i}\n" for i in range(2500)]  # more documents than one map batch (1000)
    blocks = pack_dataset(Dataset.from_dict({"text": docs}), tiny_tokenizer, 16)
    ref = reference_stream(tiny_tokenizer, docs)
    ids = _ids(blocks).ravel().tolist()
    assert ids == ref[: len(ids)] and len(ref) - len(ids) < 16


@pytest.mark.parametrize("stride", [1, 3, 10, 16])
def test_stride_gives_the_sliding_window(ds, tiny_tokenizer, stream, stride):
    bs = 10
    ids = _ids(pack_dataset(ds, tiny_tokenizer, bs, stride=stride))
    expected = [stream[s: s + bs] for s in range(0, len(stream) - bs + 1, stride)]
    assert ids.tolist() == expected
    if stride < bs:  # consecutive blocks overlap by block_size - stride tokens
        assert (ids[1:, : bs - stride] == ids[:-1, stride:]).all()


def test_padded_remainder_has_masked_labels(ds, tiny_tokenizer, stream):
    bs = 32
    blocks = pack_dataset(ds, tiny_tokenizer, bs, drop_remainder=False)
    ids, labels = _ids(blocks), np.array(blocks["labels"])
    n_full = len(stream) // bs
    assert ids.shape == (n_full + 1, bs) and len(stream) % bs  # the fixture's stream leaves a remainder
    tail = len(stream) - n_full * bs
    assert ids.ravel()[: len(stream)].tolist() == stream
    assert (ids[-1, tail:] == tiny_tokenizer.pad_token_id).all()
    assert (labels[-1, tail:] == -100).all()
    assert (labels.ravel()[: len(stream)] == ids.ravel()[: len(stream)]).all()


def test_short_corpus_padded_into_one_block(tiny_tokenizer):
    blocks = pack_dataset(Dataset.from_dict({"text": ["ab"]}), tiny_tokenizer, 64, drop_remainder=False)
    assert len(blocks) == 1
    n = len(reference_stream(tiny_tokenizer, ["ab"]))
    assert (np.array(blocks["labels"][0][n:]) == -100).all() and blocks["labels"][0][n - 1] == 0


@pytest.mark.parametrize("stride,drop", [(None, True), (4, True), (None, False), (7, False), (20, True)])
def test_streaming_equals_in_memory(ds, tiny_tokenizer, stride, drop):
    mem = pack_dataset(ds, tiny_tokenizer, 12, stride=stride, drop_remainder=drop)
    streamed = list(pack_dataset(ds.to_iterable_dataset(num_shards=2), tiny_tokenizer, 12, stride=stride,
                                 drop_remainder=drop))
    assert [r["input_ids"] for r in streamed] == mem["input_ids"]
    if not drop:
        assert [r["labels"] for r in streamed] == mem["labels"]


def test_block_starts():
    assert block_starts(10, 4, 4).tolist() == [0, 4]
    assert block_starts(10, 4, 4, drop_remainder=False).tolist() == [0, 4, 8]
    assert block_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert block_starts(11, 4, 3, drop_remainder=False).tolist() == [0, 3, 6, 9]
    assert block_starts(3, 4, 4).tolist() == []
    assert block_starts(3, 4, 4, drop_remainder=False).tolist() == [0]


def test_stats_match_the_reference(ds, tiny_tokenizer, stream):
    _, stats = pack_with_stats(ds, tiny_tokenizer, 8)
    nonempty = [d for d in DOCS if d]
    assert stats["documents"] == len(nonempty)
    assert stats["characters"] == sum(len(d) for d in DOCS)
    assert stats["bytes"] == sum(len(d.encode()) for d in DOCS) > stats["characters"]
    assert stats["tokens"] == len(stream)
    assert stats["blocks"] == len(stream) // 8
    assert stats["bytes_per_token"] == pytest.approx(stats["bytes"] / len(stream), rel=1e-3)


def test_num_proc_2_equals_num_proc_1(tiny_tokenizer, tmp_path):
    ds = Dataset.from_dict({"text": DOCS * 20})
    ds.save_to_disk(tmp_path / "d")
    on_disk = Dataset.load_from_disk(tmp_path / "d")  # file-backed, as from the loaders
    one = pack_dataset(on_disk, tiny_tokenizer, 16, num_proc=1)
    two = pack_dataset(on_disk, tiny_tokenizer, 16, num_proc=2)
    assert one["input_ids"] == two["input_ids"]


def _write_corpus(folder, n=30):
    folder.mkdir()
    for i in range(n):
        (folder / f"m{i}.py").write_text(f"# module {i}\n" + "".join(f"v{j} = {i * j}\n" for j in range(40)))
    return folder


def test_second_preparation_is_served_from_cache(tmp_path, tiny_tokenizer):
    args = DataArguments(dataset=str(_write_corpus(tmp_path / "corpus")), validation_fraction=0.2)
    first, _, stats1 = prepare_datasets(args, block_size=32, tokenizer=tiny_tokenizer, vocab_size=512)
    files = {s: [f["filename"] for f in first[s].cache_files] for s in first}
    assert all(files.values())  # on disk, in the datasets cache
    mtimes = {f: os.stat(f).st_mtime_ns for fs in files.values() for f in fs}
    second, _, stats2 = prepare_datasets(args, block_size=32, tokenizer=tiny_tokenizer, vocab_size=512)
    for s in first:
        assert second[s]._fingerprint == first[s]._fingerprint
        assert [f["filename"] for f in second[s].cache_files] == files[s]
    assert {f: os.stat(f).st_mtime_ns for f in mtimes} == mtimes  # read back, not rewritten
    assert stats2 == stats1
    # A different packing setting is a different cache entry.
    third, _, _ = prepare_datasets(args, block_size=16, tokenizer=tiny_tokenizer, vocab_size=512)
    assert third["train"]._fingerprint != first["train"]._fingerprint


def test_trained_tokenizer_is_deterministic_so_the_cache_hits(tmp_path):
    args = DataArguments(dataset=str(_write_corpus(tmp_path / "corpus", n=12)), validation_fraction=0.25)
    first, tok1, _ = prepare_datasets(args, block_size=32, vocab_size=300)
    second, tok2, _ = prepare_datasets(args, block_size=32, vocab_size=300)
    assert tok1.backend_tokenizer.to_str() == tok2.backend_tokenizer.to_str()
    assert second["train"].cache_files == first["train"].cache_files


# ------------------------------------------------------------------------------------------- errors


def test_missing_column_lists_the_columns(tiny_tokenizer):
    bad = Dataset.from_dict({"body": ["a"], "id": [1]})
    with pytest.raises(ValueError, match=r"no 'text' column.*\['body', 'id'\]"):
        pack_dataset(bad, tiny_tokenizer, 8)


def test_empty_corpus(tiny_tokenizer):
    with pytest.raises(ValueError, match="empty"):
        pack_dataset(Dataset.from_dict({"text": ["", ""]}), tiny_tokenizer, 8)


def test_corpus_shorter_than_a_block_says_how_many_tokens(tiny_tokenizer):
    n = len(reference_stream(tiny_tokenizer, ["print(1)"]))
    with pytest.raises(ValueError, match=rf"has {n} tokens but one block needs 64"):
        pack_dataset(Dataset.from_dict({"text": ["print(1)"]}), tiny_tokenizer, 64)


def test_tokenizer_larger_than_model_vocab(tiny_tokenizer, tmp_path):
    n = len(tiny_tokenizer)
    check_tokenizer_fits(tiny_tokenizer, n)  # equal is fine
    with pytest.raises(ValueError, match=rf"has {n} tokens but the model vocabulary has only {n - 1}"):
        check_tokenizer_fits(tiny_tokenizer, n - 1)
    args = DataArguments(dataset=str(_write_corpus(tmp_path / "c", n=5)))
    with pytest.raises(ValueError, match="vocab-size"):
        prepare_datasets(args, block_size=8, tokenizer=tiny_tokenizer, vocab_size=300)


@pytest.mark.parametrize("kwargs,match", [({"block_size": 1}, "block_size=1"),
                                          ({"block_size": 8, "stride": 0}, "stride=0")])
def test_bad_block_arguments(ds, tiny_tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pack_dataset(ds, tiny_tokenizer, **kwargs)


def test_no_validation_split_gives_empty_validation_blocks(tmp_path, tiny_tokenizer):
    args = DataArguments(dataset=str(_write_corpus(tmp_path / "c", n=6)), validation_fraction=0.0)
    blocks, _, stats = prepare_datasets(args, block_size=16, tokenizer=tiny_tokenizer, vocab_size=512)
    assert len(blocks["validation"]) == 0 and stats["validation"]["blocks"] == 0
    assert stats["train"]["documents"] == 6 and len(blocks["train"]) == stats["train"]["tokens"] // 16


def test_short_validation_split_suggests_the_fraction(tmp_path, tiny_tokenizer):
    args = DataArguments(dataset=str(_write_corpus(tmp_path / "c", n=30)), validation_fraction=0.05)
    _, _, stats = prepare_datasets(args, block_size=8, tokenizer=tiny_tokenizer, vocab_size=512)
    n_val = stats["validation"]["tokens"]
    assert stats["train"]["tokens"] > n_val + 1  # the train split alone would pack
    with pytest.raises(ValueError, match=rf"validation split .* has {n_val} tokens but one block needs "
                                         rf"{n_val + 1}.*--validation-fraction"):
        prepare_datasets(args, block_size=n_val + 1, tokenizer=tiny_tokenizer, vocab_size=512)


def test_cache_key_ignores_padding_state_and_survives_a_reload(tmp_path, tiny_tokenizer):
    from training.data.packing import tokenizer_hash
    from training.data.tokenizer import load_tokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    reloaded = load_tokenizer(str(tmp_path / "tok"))
    reloaded("some text", padding="max_length", max_length=20, truncation=True)  # leaves backend state
    assert tokenizer_hash(reloaded) == tokenizer_hash(tiny_tokenizer)
