"""Packing: documents -> token ids (documents joined with EOS) -> fixed-length training blocks.

Design choices:
- Every non-empty document is tokenised without special tokens and followed by one EOS token; the
  token stream is the concatenation of these. Empty (or None) documents contribute nothing.
- Blocks start at ``0, stride, 2*stride, ...`` (the book's sliding window; ``stride == block_size`` is the
  default and means no overlap). With ``drop_remainder=True`` only whole blocks are kept; with
  ``drop_remainder=False`` one more block covering the tail is padded with the pad id, and a ``labels``
  column with -100 on the padding is added (only in that case: otherwise labels are the input ids and
  the model shifts them itself).
- Packing is global, not per ``map`` batch, so no token is lost at batch boundaries: the tokenised
  documents are stored once (``Dataset.map(batched=True, num_proc=...)``, memory-mapped from the datasets
  cache) and the blocks are cut from that stream by a second ``map`` over block indices. Both steps
  get explicit fingerprints (input fingerprint + tokenizer hash + packing settings), so an identical
  second preparation is served from the cache files.
- ``IterableDataset`` (streaming) inputs are packed lazily with a carry-over buffer and yield exactly
  the blocks of the in-memory path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_PACKING_VERSION = "1"  # bump when the packing output changes, to invalidate old cache files


def check_tokenizer_fits(tokenizer, vocab_size: int) -> None:
    """Raise ``ValueError`` when ``tokenizer`` has more tokens than the model vocabulary ``vocab_size``."""
    n = len(tokenizer)
    if n > vocab_size:
        raise ValueError(
            f"the tokenizer has {n} tokens but the model vocabulary has only {vocab_size}: ids >= {vocab_size} "
            f"would index past the embedding. Set the model's vocab_size to at least {n} "
            f"(e.g. --vocab-size {n}) or use a smaller tokenizer"
        )


def _check_block_args(tokenizer, block_size: int, stride: int | None) -> int:
    if block_size < 2:
        raise ValueError(f"block_size={block_size} must be >= 2 (a block needs an input and a next token)")
    stride = block_size if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride={stride} must be >= 1 (use stride == block_size for no overlap)")
    if stride > block_size:
        logger.warning("stride %d > block_size %d: %d tokens between blocks are skipped", stride, block_size,
                       stride - block_size)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token; packing joins documents with it")
    return stride


def block_starts(total_tokens: int, block_size: int, stride: int, drop_remainder: bool = True) -> np.ndarray:
    """Start offsets of the blocks cut from a stream of ``total_tokens`` tokens."""
    if total_tokens >= block_size:
        starts = np.arange(0, total_tokens - block_size + 1, stride, dtype=np.int64)
    else:
        starts = np.zeros(0, dtype=np.int64)
    if not drop_remainder and total_tokens > 0:
        covered = int(starts[-1]) + block_size if len(starts) else 0
        if covered < total_tokens:  # a tail not covered by a full block: one padded block for it
            nxt = int(starts[-1]) + stride if len(starts) else 0
            if nxt < total_tokens:
                starts = np.append(starts, nxt)
    return starts


def tokenizer_hash(tokenizer) -> str:
    """Hash of what decides the token ids (not the padding/truncation state that ``__call__`` leaves)."""
    import json

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    h = hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8"))
    h.update(f"eos={tokenizer.eos_token_id};pad={tokenizer.pad_token_id}".encode())
    return h.hexdigest()


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode("utf-8")).hexdigest()[:32]


def _encode_texts(backend, texts: list, eos_id: int) -> list[list[int]]:
    """Token ids of each text followed by EOS; empty or None texts give an empty list."""
    nonempty = [t for t in texts if t]
    encodings = backend.encode_batch_fast(nonempty, add_special_tokens=False) if nonempty else []
    out: list[list[int]] = []
    it = iter(encodings)
    for t in texts:
        if t:
            ids = next(it).ids
            ids.append(eos_id)
            out.append(ids)
        else:
            out.append([])
    return out


def _tokenize_batch(batch: dict, tokenizer, eos_id: int, text_column: str):
    import pyarrow as pa

    ids = _encode_texts(tokenizer.backend_tokenizer, batch[text_column], eos_id)
    return pa.table({"input_ids": pa.array(ids, type=pa.list_(pa.int32()))})


@contextlib.contextmanager
def _tokenizers_parallelism(enabled: bool):
    """Turn off the Rust thread pool while forked map workers run (each worker is one process)."""
    if enabled:
        yield
        return
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _require_column(ds, column: str) -> None:
    cols = ds.column_names
    if cols is not None and column not in cols:
        raise ValueError(f"the dataset has no {column!r} column; its columns are {cols}. "
                         f"Select the text column first (--text-column)")


def tokenize_documents(ds, tokenizer, num_proc: int = 1, text_column: str = "text", batch_size: int = 1000):
    """Map a ``text`` Dataset to one row of token ids (document + EOS) per document (cached)."""
    from datasets import Features, List, Value

    _require_column(ds, text_column)
    eos_id = tokenizer.eos_token_id
    kwargs = dict(batched=True, batch_size=batch_size, remove_columns=ds.column_names,
                  fn_kwargs={"tokenizer": tokenizer, "eos_id": eos_id, "text_column": text_column})
    num_proc = max(1, min(num_proc, len(ds)))
    fp = _fingerprint("tokenize", _PACKING_VERSION, ds._fingerprint, tokenizer_hash(tokenizer), text_column)
    with _tokenizers_parallelism(num_proc == 1):
        return ds.map(
            **kwargs,
            function=_tokenize_batch,
            num_proc=num_proc if num_proc > 1 else None,
            features=Features({"input_ids": List(Value("int32"))}),
            new_fingerprint=fp,
            desc="Tokenizing",
        )


def _stream_slice(tok_ds, offsets: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Tokens ``[start, stop)`` of the concatenated ``input_ids`` column (zero-copy reads of arrow data)."""
    d0 = int(np.searchsorted(offsets, start, side="right")) - 1
    d1 = int(np.searchsorted(offsets, stop, side="left"))
    col = tok_ds.data.column("input_ids").slice(d0, d1 - d0)
    values = [c.flatten().to_numpy(zero_copy_only=False) for c in col.chunks] if col.num_chunks else []
    flat = np.concatenate(values) if values else np.zeros(0, dtype=np.int32)
    base = int(offsets[d0])
    return flat[start - base: stop - base].astype(np.int32, copy=False)


def _cut_blocks(batch: dict, tok_ds, offsets: np.ndarray, total: int, block_size: int, pad_id: int,
                with_labels: bool):
    import pyarrow as pa

    starts = np.asarray(batch["start"], dtype=np.int64)
    lo, hi = int(starts[0]), min(int(starts[-1]) + block_size, total)
    stream = _stream_slice(tok_ds, offsets, lo, hi)
    need = int(starts[-1]) + block_size - lo
    if len(stream) < need:  # only the last (padded) block runs past the end
        stream = np.concatenate([stream, np.full(need - len(stream), -1, dtype=np.int32)])
    idx = (starts - lo)[:, None] + np.arange(block_size)[None, :]
    blocks = stream[idx]  # (n_blocks, block_size); -1 marks padding
    pad = blocks < 0
    cols = {}
    ids = np.where(pad, pad_id, blocks).astype(np.int32)
    cols["input_ids"] = pa.FixedSizeListArray.from_arrays(pa.array(ids.ravel()), block_size)
    if with_labels:
        labels = np.where(pad, -100, blocks).astype(np.int32)
        cols["labels"] = pa.FixedSizeListArray.from_arrays(pa.array(labels.ravel()), block_size)
    return pa.table(cols)


def _features(block_size: int, with_labels: bool):
    from datasets import Features, List, Value

    f = {"input_ids": List(Value("int32"), length=block_size)}
    if with_labels:
        f["labels"] = List(Value("int32"), length=block_size)
    return Features(f)


def _blocks_from_tokenized(tok_ds, block_size: int, stride: int, drop_remainder: bool, pad_id: int):
    """Cut the blocks out of a tokenised (in-memory or cached) ``Dataset`` with one ``map``."""
    import pyarrow.compute as pc
    from datasets import Dataset

    lengths = pc.list_value_length(tok_ds.data.column("input_ids")).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    starts = block_starts(total, block_size, stride, drop_remainder)
    with_labels = not drop_remainder
    index = Dataset.from_dict({"start": starts})
    fp = _fingerprint("blocks", _PACKING_VERSION, tok_ds._fingerprint, block_size, stride, drop_remainder, pad_id)
    cache_file = None
    if tok_ds.cache_files:
        cache_file = os.path.join(os.path.dirname(tok_ds.cache_files[0]["filename"]), f"cache-blocks-{fp}.arrow")
    blocks = index.map(
        _cut_blocks,
        batched=True,
        batch_size=max(1, (1 << 20) // block_size),  # ~1M tokens per batch
        remove_columns=["start"],
        fn_kwargs={"tok_ds": tok_ds, "offsets": offsets, "total": total, "block_size": block_size,
                   "pad_id": pad_id, "with_labels": with_labels},
        features=_features(block_size, with_labels),
        new_fingerprint=fp,
        cache_file_name=cache_file,
        desc="Packing",
    )
    return blocks, total


def _iter_stream_blocks(texts: Iterator, tokenizer, block_size: int, stride: int, drop_remainder: bool,
                        pad_id: int, batch_size: int = 256) -> Iterator[dict]:
    """Streaming packing: the blocks of :func:`block_starts` over the concatenated stream, lazily."""
    backend, eos_id = tokenizer.backend_tokenizer, tokenizer.eos_token_id
    buf = np.zeros(0, dtype=np.int32)
    pos = 0  # stream position of buf[0]
    nxt = 0  # stream position of the next block start
    last_end = 0  # stream position after the last emitted block
    with_labels = not drop_remainder

    def batches() -> Iterator[list]:
        batch: list = []
        for t in texts:
            batch.append(t)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    for batch in batches():
        ids = [np.asarray(x, dtype=np.int32) for x in _encode_texts(backend, batch, eos_id) if x]
        if not ids:
            continue
        buf = np.concatenate([buf, *ids])
        while nxt + block_size <= pos + len(buf):
            s = nxt - pos
            block = buf[s: s + block_size].tolist()
            yield {"input_ids": block, "labels": block} if with_labels else {"input_ids": block}
            last_end = nxt + block_size
            nxt += stride
        drop = min(nxt - pos, len(buf))  # tokens before the next block start are never needed again
        if drop > 0:
            buf, pos = buf[drop:], pos + drop
    total = pos + len(buf)
    if with_labels and total > 0 and last_end < total and nxt < total:
        tail = buf[nxt - pos:].tolist()
        n_pad = block_size - len(tail)
        yield {"input_ids": tail + [pad_id] * n_pad, "labels": tail + [-100] * n_pad}


def _gen_stream_blocks(ds, text_column: str, tokenizer, block_size: int, stride: int, drop_remainder: bool,
                       pad_id: int):
    texts = (ex[text_column] for ex in ds)
    yield from _iter_stream_blocks(texts, tokenizer, block_size, stride, drop_remainder, pad_id)


def pack_dataset(ds, tokenizer, block_size: int, stride: int | None = None, drop_remainder: bool = True,
                 num_proc: int = 1, text_column: str = "text"):
    """Tokenise the ``text`` column of ``ds`` and pack it into blocks of ``block_size`` tokens.

    Returns a ``Dataset`` (or ``IterableDataset`` for a streaming input) with an ``input_ids`` column of
    fixed length ``block_size`` (plus ``labels`` with -100 on padding when ``drop_remainder=False``).
    Raises ``ValueError`` for a missing column, an empty corpus, or one shorter than a block.
    """
    blocks, _ = pack_with_stats(ds, tokenizer, block_size, stride=stride, drop_remainder=drop_remainder,
                                num_proc=num_proc, text_column=text_column)
    return blocks


def pack_with_stats(ds, tokenizer, block_size: int, stride: int | None = None, drop_remainder: bool = True,
                    num_proc: int = 1, text_column: str = "text", allow_empty: bool = False,
                    name: str = "corpus"):
    """:func:`pack_dataset` that also returns ``{documents, characters, bytes, tokens, bytes_per_token,
    blocks}`` (``None`` for what a streaming dataset cannot know without reading it)."""
    from datasets import Dataset, IterableDataset

    stride = _check_block_args(tokenizer, block_size, stride)
    _require_column(ds, text_column)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if isinstance(ds, IterableDataset):
        blocks = IterableDataset.from_generator(
            _gen_stream_blocks, features=_features(block_size, not drop_remainder),
            gen_kwargs={"ds": ds, "text_column": text_column, "tokenizer": tokenizer, "block_size": block_size,
                        "stride": stride, "drop_remainder": drop_remainder, "pad_id": pad_id})
        stats = {"documents": None, "characters": None, "bytes": None, "tokens": None,
                 "bytes_per_token": None, "blocks": None}
        return blocks, stats
    if not isinstance(ds, Dataset):
        raise ValueError(f"expected a datasets.Dataset or IterableDataset, got {type(ds).__name__}")
    stats = text_stats(ds, text_column)
    if stats["documents"] == 0 and not allow_empty:
        raise ValueError(f"the {name} is empty: it has {len(ds)} rows and no non-empty text in column "
                         f"{text_column!r}. Point --dataset at a corpus with text")
    if stats["documents"] == 0:  # allowed empty split (e.g. no validation): an empty block dataset
        features = _features(block_size, not drop_remainder)
        empty = Dataset.from_dict({k: [] for k in features}, features=features)
        return empty, {**stats, "tokens": 0, "blocks": 0, "bytes_per_token": None}
    tok = tokenize_documents(ds, tokenizer, num_proc=num_proc, text_column=text_column)
    blocks, total = _blocks_from_tokenized(tok, block_size, stride, drop_remainder, pad_id)
    if len(blocks) == 0 and not allow_empty:
        raise ValueError(
            f"the {name} has {total} tokens but one block needs {block_size}: use a smaller block size "
            f"(--block-size {max(2, total)} or less), a larger corpus, or keep the padded remainder "
            f"(drop_remainder=False)")
    stats.update(tokens=total, blocks=len(blocks),
                 bytes_per_token=round(stats["bytes"] / total, 4) if total else None)
    return blocks, stats


def text_stats(ds, text_column: str = "text") -> dict:
    """Documents (non-empty texts), characters and UTF-8 bytes of a text ``Dataset`` (arrow compute)."""
    import pyarrow.compute as pc

    col = ds.select_columns([text_column]).with_format("arrow")[:].column(0)  # honours select/shuffle views
    chars = pc.utf8_length(col)
    nbytes = pc.binary_length(col)
    docs = pc.sum(pc.greater(nbytes, 0)).as_py() or 0
    return {"documents": int(docs), "characters": int(pc.sum(chars).as_py() or 0),
            "bytes": int(pc.sum(nbytes).as_py() or 0)}
