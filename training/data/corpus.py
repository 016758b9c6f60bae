"""Corpus sources behind one ``--dataset`` argument, split into train/validation text, and the full
preparation (tokenizer + packed blocks + statistics) used by training.

Sources (``DataArguments.dataset``):
- ``python-stdlib`` (default): the ``.py`` files of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``, without site-/dist-packages and ``__pycache__``), one document
  per file. Files that are not UTF-8 (a handful of deliberately mis-encoded test fixtures) are skipped.
- a local file or folder: ``.txt/.md/.rst/.py`` are read as text (one document per file, or per
  paragraph/line with ``sample_by``), ``.json/.jsonl/.csv/.parquet`` go through the ``datasets``
  builders and need a text column (``text`` or the only string column, else ``--text-column``).
- an in-memory ``datasets.Dataset`` / ``DatasetDict`` / ``IterableDataset`` passed as ``dataset``.
- anything else is a Hub dataset id (``dataset_config``, ``split``, ``revision``, ``streaming``).

Validation split: a given ``validation_split`` is used as is; otherwise documents are assigned by a
hash (SHA-1) of a stable key -- the file's relative path for file sources, the text itself for rows --
so the split is the same on every run and machine and never depends on order or seed. If that leaves
either side empty (a corpus of very few documents, e.g. one text file), the corpus is cut by characters
instead: the last ``validation_fraction`` of the characters (from a line start) is validation, as in
the book. Local and stdlib text is read through ``Dataset.from_generator`` so it lands in the datasets
cache (memory-mapped, reused when the files are unchanged).
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

STDLIB = "python-stdlib"
TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py")
STRUCTURED_EXTENSIONS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class DataArguments:
    """Where the text comes from and how it is split. Every field is a ``--kebab-case`` CLI option."""

    dataset: str = field(default=STDLIB, metadata={"help": (
        "corpus: 'python-stdlib' (this Python's standard library, no download), a local file or folder "
        "(txt, md, rst, py, json, jsonl, csv, parquet) or a Hub dataset id")})
    text_column: str | None = field(default=None, metadata={"help": (
        "column holding the text (json/jsonl/csv/parquet/Hub); default: 'text' or the only string column")})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name"})
    split: str = field(default="train", metadata={"help": "Hub split to train on"})
    validation_split: str | None = field(default=None, metadata={"help": (
        "Hub split to validate on; default: carve validation-fraction of the documents out of the train split")})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (branch, tag or commit)"})
    streaming: bool = field(default=False, metadata={"help": (
        "stream the corpus instead of loading it (corpora larger than memory or disk); no statistics up front")})
    validation_fraction: float = field(default=0.05, metadata={"help": (
        "fraction of documents held out for validation (chosen by a hash of the file path or text)")})
    max_documents: int | None = field(default=None, metadata={"help": (
        "use only this many documents (before the split; files are taken in hash order, a fixed sample)")})
    num_proc: int = field(default=1, metadata={"help": "processes for tokenisation (Dataset.map num_proc)"})
    seed: int = field(default=0, metadata={"help": (
        "random seed (model weights, data order and samples when training; --shuffle-documents); "
        "the validation split never depends on it")})
    shuffle_documents: bool = field(default=False, metadata={"help": (
        "shuffle the training documents (with --seed) before packing; not available with --streaming")})
    sample_by: str = field(default="document", metadata={"help": (
        "for txt/md/rst/py files: one example per 'document' (file), 'paragraph' (blank-line separated) or 'line'"),
        "choices": ("document", "paragraph", "line")})

    _argument_group_name = "data"


# --------------------------------------------------------------------------------------------- helpers


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) from ``key`` (SHA-1, identical on every machine and run)."""
    return int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


def is_validation(key: str, fraction: float) -> bool:
    """Whether the document with stable ``key`` belongs to the validation split."""
    return hash_fraction(key) < fraction


def _validate_args(args: DataArguments) -> None:
    if not 0.0 <= args.validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={args.validation_fraction} must be in [0, 1)")
    if args.max_documents is not None and args.max_documents < 1:
        raise ValueError(f"max_documents={args.max_documents} must be >= 1 (or unset for all documents)")
    if args.num_proc < 1:
        raise ValueError(f"num_proc={args.num_proc} must be >= 1")
    if args.sample_by not in ("document", "paragraph", "line"):
        raise ValueError(f"sample_by={args.sample_by!r} must be 'document', 'paragraph' or 'line'")


def read_utf8(path: str) -> str:
    """Read a text file as UTF-8; a ``ValueError`` names the file and the first bad byte."""
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}); convert it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > fixed.txt`, or remove it from the corpus") from None


def check_utf8(path: str, chunk_size: int = 1 << 20) -> None:
    """Stream-check that a file is UTF-8 (for files handed to the datasets builders)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(chunk_size)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path} is not UTF-8 (bad byte near offset {offset + max(err.start, 0)}); convert it to "
                    f"UTF-8 (e.g. with iconv) or remove it from the corpus") from None
            if not chunk:
                return
            offset += len(chunk)


def stdlib_files() -> tuple[str, list[str]]:
    """The stdlib root and the relative (posix) paths of its ``.py`` files, sorted by path."""
    root = sysconfig.get_paths()["stdlib"]
    rel: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _EXCLUDED_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                rel.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return root, sorted(rel)


def _local_files(path: str) -> tuple[str, list[str]]:
    """Root folder and relative paths of the usable files of a local file or folder."""
    supported = TEXT_EXTENSIONS + tuple(STRUCTURED_EXTENSIONS)
    if os.path.isfile(path):
        if not path.lower().endswith(supported):
            raise ValueError(f"--dataset {path}: unsupported file kind; rename it with one of the supported "
                             f"extensions ({', '.join(supported)}), e.g. .txt for plain text")
        return os.path.dirname(os.path.abspath(path)), [os.path.basename(path)]
    rel = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in _EXCLUDED_DIRS)
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(supported):
                rel.append(os.path.relpath(os.path.join(dirpath, name), path).replace(os.sep, "/"))
    if not rel:
        raise ValueError(f"the folder {path} has no corpus files; supported extensions: {', '.join(supported)}")
    return os.path.abspath(path), sorted(rel)


def _file_entries(root: str, rel_paths: list[str]) -> list[tuple[str, str, int, int]]:
    """(absolute path, key, size, mtime_ns): the key splits, size and mtime invalidate the cache."""
    out = []
    for rel in rel_paths:
        p = os.path.join(root, rel)
        st = os.stat(p)
        out.append((p, rel, st.st_size, st.st_mtime_ns))
    return out


def _split_units(text: str, sample_by: str) -> list[str]:
    if sample_by == "document":
        return [text]
    if sample_by == "line":
        return [line for line in text.splitlines() if line.strip()]
    paragraphs, cur = [], []
    for line in text.splitlines(keepends=True):
        if line.strip():
            cur.append(line)
        elif cur:
            paragraphs.append("".join(cur))
            cur = []
    if cur:
        paragraphs.append("".join(cur))
    return paragraphs


def _gen_text_files(files: list, sample_by: str = "document", skip_non_utf8: bool = False,
                    part: str | None = None, fraction: float = 0.0) -> Iterator[dict]:
    """Yield ``{"text": ...}`` per document of ``files``; ``part`` selects a character-cut half."""
    texts = _iter_file_texts(files, sample_by, skip_non_utf8)
    if part is None:
        for text in texts:
            yield {"text": text}
        return
    yield from ({"text": t} for t in _char_cut(list(texts), fraction)[0 if part == "train" else 1])


def _iter_file_texts(files: list, sample_by: str, skip_non_utf8: bool) -> Iterator[str]:
    for path, _key, _size, _mtime in files:
        try:
            text = read_utf8(path)
        except ValueError:
            if skip_non_utf8:
                logger.debug("skipping non-UTF-8 file %s", path)
                continue
            raise
        yield from _split_units(text, sample_by)


def _char_cut(texts: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """Split documents at ``1 - fraction`` of the characters (moved to the next line start)."""
    total = sum(len(t) for t in texts)
    cut = int(round(total * (1.0 - fraction)))
    train: list[str] = []
    val: list[str] = []
    seen = 0
    for t in texts:
        if seen + len(t) <= cut:
            train.append(t)
        elif seen >= cut:
            val.append(t)
        else:
            local = cut - seen
            nl = t.find("\n", local)
            local = nl + 1 if 0 <= nl < len(t) - 1 else local
            if t[:local]:
                train.append(t[:local])
            if t[local:]:
                val.append(t[local:])
        seen += len(t)
    return train, val


def _from_generator(gen, gen_kwargs: dict, streaming: bool):
    from datasets import Dataset, Features, IterableDataset, Value
    from datasets.exceptions import DatasetGenerationError

    features = Features({"text": Value("string")})
    empty = Dataset.from_dict({"text": []}, features=features)
    if not gen_kwargs.get("files"):  # nothing to read (e.g. no validation files): an empty split
        return empty.to_iterable_dataset() if streaming else empty
    if streaming:
        return IterableDataset.from_generator(gen, features=features, gen_kwargs=gen_kwargs)
    try:
        return Dataset.from_generator(gen, features=features, gen_kwargs=gen_kwargs)
    except ValueError as err:
        if "corresponds to no data" in str(err):  # the files held no text: datasets refuses an empty split
            return empty
        raise
    except DatasetGenerationError as err:  # surface our own errors (e.g. a non-UTF-8 file) unwrapped
        cause = err.__cause__
        while cause is not None and not isinstance(cause, ValueError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def _load_text_files(root: str, rel_paths: list[str], args: DataArguments, skip_non_utf8: bool = False):
    """Text files -> DatasetDict(train, validation) split by a hash of each file's relative path."""
    from datasets import DatasetDict, IterableDatasetDict

    if args.max_documents is not None:  # a fixed pseudo-random sample (a hash independent of the split's)
        rel_paths = sorted(sorted(rel_paths, key=lambda r: hash_fraction("sample:" + r))[: args.max_documents])
    entries = _file_entries(root, rel_paths)
    common = {"sample_by": args.sample_by, "skip_non_utf8": skip_non_utf8}
    train = [e for e in entries if not is_validation(e[1], args.validation_fraction)]
    val = [e for e in entries if is_validation(e[1], args.validation_fraction)]
    if args.validation_fraction > 0 and (not train or not val):
        logger.info("%d file(s) are too few for a split by file: cutting the last %.0f%% of the characters "
                    "off as validation", len(entries), 100 * args.validation_fraction)
        splits = {part: _from_generator(_gen_text_files, {"files": entries, **common, "part": part,
                                                          "fraction": args.validation_fraction},
                                        args.streaming) for part in ("train", "validation")}
    else:
        splits = {"train": _from_generator(_gen_text_files, {"files": train, **common}, args.streaming),
                  "validation": _from_generator(_gen_text_files, {"files": val, **common}, args.streaming)}
    return IterableDatasetDict(splits) if args.streaming else DatasetDict(splits)


# ----------------------------------------------------------------------------------- row datasets


def _string_columns(ds) -> list[str]:
    from datasets import Value

    feats = ds.features or {}
    return [k for k, v in feats.items() if isinstance(v, Value) and v.dtype in ("string", "large_string")]


def select_text_column(ds, text_column: str | None, source: str):
    """Reduce ``ds`` to a single ``text`` column; clear errors for a missing or ambiguous column."""
    from datasets import IterableDataset, Value

    cols = ds.column_names
    if cols is None and isinstance(ds, IterableDataset):  # unknown schema: peek at the first row
        first = next(iter(ds), None)
        cols = list(first) if first else []
    if text_column is not None:
        if text_column not in cols:
            raise ValueError(f"{source} has no column {text_column!r}; its columns are {cols}. "
                             f"Pass one of them with --text-column")
        col = text_column
    elif "text" in cols:
        col = "text"
    else:
        strings = _string_columns(ds)
        if len(strings) != 1:
            raise ValueError(f"{source} has no 'text' column and {len(strings)} string columns; its columns "
                             f"are {cols}. Say which one holds the text with --text-column")
        col = strings[0]
        logger.info("using column %r of %s as text", col, source)
    feat = (ds.features or {}).get(col)
    if feat is not None and not (isinstance(feat, Value) and feat.dtype in ("string", "large_string")):
        raise ValueError(f"column {col!r} of {source} holds {feat}, not text; pick a string column from {cols} "
                         f"with --text-column")
    ds = ds.select_columns([col])
    return ds.rename_column(col, "text") if col != "text" else ds


def _hash_filter(batch: dict, fraction: float, want_validation: bool) -> list[bool]:
    return [is_validation(t or "", fraction) == want_validation for t in batch["text"]]


def _split_rows(ds, args: DataArguments):
    """Split a one-column ``text`` dataset by a hash of each text (rows keep their order)."""
    from datasets import Dataset, DatasetDict, IterableDatasetDict

    kw = {"batched": True, "fn_kwargs": {"fraction": args.validation_fraction}}
    if not isinstance(ds, Dataset):  # streaming
        return IterableDatasetDict({
            "train": ds.filter(_hash_filter, **kw | {"fn_kwargs": kw["fn_kwargs"] | {"want_validation": False}}),
            "validation": ds.filter(_hash_filter, **kw | {"fn_kwargs": kw["fn_kwargs"] | {"want_validation": True}}),
        })
    num_proc = args.num_proc if args.num_proc > 1 and len(ds) > 1000 else None
    train = ds.filter(_hash_filter, num_proc=num_proc, desc="Split (train)",
                      **kw | {"fn_kwargs": kw["fn_kwargs"] | {"want_validation": False}})
    val = ds.filter(_hash_filter, num_proc=num_proc, desc="Split (validation)",
                    **kw | {"fn_kwargs": kw["fn_kwargs"] | {"want_validation": True}})
    if args.validation_fraction > 0 and (len(train) == 0 or len(val) == 0):
        logger.info("%d document(s) are too few for a split by document: cutting the last %.0f%% of the "
                    "characters off as validation", len(ds), 100 * args.validation_fraction)
        t, v = _char_cut(list(ds["text"]), args.validation_fraction)
        train, val = Dataset.from_dict({"text": t}), Dataset.from_dict({"text": v})
    return DatasetDict({"train": train, "validation": val})


def _limit(ds, n: int | None):
    from datasets import Dataset

    if n is None:
        return ds
    return ds.select(range(min(n, len(ds)))) if isinstance(ds, Dataset) else ds.take(n)


def _from_object(obj, args: DataArguments):
    """An in-memory Dataset / DatasetDict / IterableDataset(Dict) as the source."""
    from datasets import DatasetDict, IterableDatasetDict

    if isinstance(obj, (DatasetDict, IterableDatasetDict)):
        if args.split not in obj:
            raise ValueError(f"the dataset has no split {args.split!r}; its splits are {list(obj)}")
        train = _limit(select_text_column(obj[args.split], args.text_column, "the dataset"), args.max_documents)
        if args.validation_split is not None or "validation" in obj:
            vname = args.validation_split or "validation"
            if vname not in obj:
                raise ValueError(f"the dataset has no split {vname!r}; its splits are {list(obj)}")
            val = select_text_column(obj[vname], args.text_column, "the dataset")
            return type(obj)({"train": train, "validation": val})
        return _split_rows(train, args)
    ds = _limit(select_text_column(obj, args.text_column, "the dataset"), args.max_documents)
    return _split_rows(ds, args)


def _load_structured(root: str, rel_paths: list[str], builder: str, args: DataArguments):
    from datasets import load_dataset

    files = [os.path.join(root, r) for r in rel_paths]
    if builder in ("json", "csv"):
        for f in files:
            check_utf8(f)
    ds = load_dataset(builder, data_files={"train": files}, split="train", streaming=args.streaming)
    source = files[0] if len(files) == 1 else f"{root} ({len(files)} {builder} files)"
    ds = _limit(select_text_column(ds, args.text_column, source), args.max_documents)
    return _split_rows(ds, args)


def _load_local(path: str, args: DataArguments):
    root, rel = _local_files(path)
    text = [r for r in rel if r.lower().endswith(TEXT_EXTENSIONS)]
    structured = {STRUCTURED_EXTENSIONS[os.path.splitext(r)[1].lower()] for r in rel if r not in text}
    if text and structured or len(structured) > 1:
        kinds = sorted(structured | ({"text"} if text else set()))
        raise ValueError(f"{path} mixes file kinds {kinds}; point --dataset at one file or at a folder "
                         "holding a single kind (text files, or json/jsonl, csv or parquet)")
    if text:
        return _load_text_files(root, text, args)
    builder = structured.pop()
    return _load_structured(root, rel, builder, args)


def _load_hub(args: DataArguments):
    from datasets import DatasetDict, IterableDatasetDict, load_dataset

    common = {"name": args.dataset_config, "revision": args.revision, "streaming": args.streaming}
    train = load_dataset(args.dataset, split=args.split, **common)
    train = _limit(select_text_column(train, args.text_column, args.dataset), args.max_documents)
    if args.validation_split is None:
        return _split_rows(train, args)
    val = select_text_column(load_dataset(args.dataset, split=args.validation_split, **common),
                             args.text_column, args.dataset)
    return (IterableDatasetDict if args.streaming else DatasetDict)({"train": train, "validation": val})


def _looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~")) or os.sep in name and name.count("/") != 1
            or name.lower().endswith(TEXT_EXTENSIONS + tuple(STRUCTURED_EXTENSIONS)))


def load_text_splits(args: DataArguments):
    """Load ``args.dataset`` as ``{"train", "validation"}`` splits with a single ``text`` column.

    Returns a ``DatasetDict`` (an ``IterableDatasetDict`` with ``streaming``).
    """
    _validate_args(args)
    src = args.dataset
    if not isinstance(src, str):
        splits = _from_object(src, args)
    elif src == STDLIB:
        root, rel = stdlib_files()
        splits = _load_text_files(root, rel, args, skip_non_utf8=True)
    elif os.path.exists(os.path.expanduser(src)):
        splits = _load_local(os.path.expanduser(src), args)
    elif _looks_like_path(src):
        raise FileNotFoundError(f"--dataset {src}: no such file or folder (and not a Hub dataset id "
                                f"like 'owner/name'); use '{STDLIB}' for the built-in corpus")
    else:
        splits = _load_hub(args)
    if args.shuffle_documents:
        if args.streaming:
            raise ValueError("--shuffle-documents needs the in-memory path; drop --streaming or the shuffle")
        splits["train"] = splits["train"].shuffle(seed=args.seed)
    if not args.streaming:
        check_not_empty(splits["train"], src)
    return splits


def check_not_empty(train, source) -> None:
    """An empty corpus (no document with a non-space character) is an error for every command, never a
    useless tokenizer or model. Stops at the first real document, so a normal corpus costs one row."""
    for batch in train.iter(batch_size=256):
        if any(text and not text.isspace() for text in batch["text"]):
            return
    raise ValueError(f"the corpus {source} is empty: its train split holds no text (only empty or blank "
                     "documents); point --dataset at a corpus with text")


def prepare_datasets(args: DataArguments, block_size: int, tokenizer=None, vocab_size: int = 8192,
                     stride: int | None = None, min_frequency: int = 2, drop_remainder: bool = True,
                     show_progress: bool = False):
    """Corpus -> (packed ``{"train", "validation"}`` blocks, tokenizer, statistics).

    ``tokenizer=None`` trains a byte-level BPE of ``vocab_size`` tokens on the train split; a given
    tokenizer must fit the model vocabulary ``vocab_size``. ``stride`` applies to the train split only
    (validation blocks never overlap, so no token is scored twice). Stats: per split ``documents,
    characters, bytes, tokens, bytes_per_token, blocks`` plus ``vocab_size`` and ``block_size``.
    """
    from datasets import DatasetDict, IterableDatasetDict

    from .packing import check_tokenizer_fits, pack_with_stats
    from .tokenizer import train_tokenizer

    splits = load_text_splits(args)
    if tokenizer is None:
        if args.streaming:
            texts = (ex["text"] for ex in splits["train"])
            length = None
        else:
            texts = (t for batch in splits["train"].iter(batch_size=1000) for t in batch["text"])
            length = len(splits["train"])
        tokenizer = train_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency,
                                    show_progress=show_progress, model_max_length=block_size, length=length)
    check_tokenizer_fits(tokenizer, vocab_size)
    blocks, stats = {}, {}
    for name in ("train", "validation"):
        allow_empty = name == "validation" and args.validation_fraction == 0 and args.validation_split is None
        try:
            blocks[name], stats[name] = pack_with_stats(
                splits[name], tokenizer, block_size, stride=stride if name == "train" else None,
                drop_remainder=drop_remainder, num_proc=args.num_proc, allow_empty=allow_empty,
                name=f"{name} split of {args.dataset if isinstance(args.dataset, str) else 'the dataset'}")
        except ValueError as err:
            if name == "validation" and args.validation_split is None:
                raise ValueError(f"{err}; or hold out more text with --validation-fraction (now "
                                 f"{args.validation_fraction}), or 0 for no validation") from None
            raise
    stats["vocab_size"] = len(tokenizer)
    stats["block_size"] = block_size
    out = (IterableDatasetDict if args.streaming else DatasetDict)(blocks)
    return out, tokenizer, stats
