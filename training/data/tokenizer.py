"""Byte-level BPE tokenizer training and loading.

Design choices:
- GPT-2 style byte-level BPE (``tokenizers``): the 256 byte symbols are the initial alphabet, so every
  Unicode string (emoji, CJK, control characters, lone surrogates aside) encodes without an unknown token
  and decodes back byte for byte. No normaliser, no prefix space, no offset trimming.
- Special tokens come first and have fixed ids: ``<|endoftext|>`` = 0 (bos = eos = unk, as in GPT-2) and
  ``<|pad|>`` = 1. The model config takes its bos/eos/pad ids from :func:`special_token_ids`.
- The result is a ``PreTrainedTokenizerFast`` so ``save_pretrained`` / ``AutoTokenizer.from_pretrained``
  round-trip it with no custom code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

from transformers import AutoTokenizer, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)  # ids 0 and 1, in this order
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # the byte alphabet plus the special tokens


def _as_strings(texts: Iterable[str]) -> Iterator[str]:
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"tokenizer training text #{i} is a {type(text).__name__}, not a str")
        yield text


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 8192,
    min_frequency: int = 2,
    show_progress: bool = False,
    model_max_length: int = 1024,
    length: int | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: the training documents (any iterable of str; consumed once).
        vocab_size: total vocabulary size, special tokens and the 256 byte symbols included.
        min_frequency: a pair must occur at least this often to be merged.
        show_progress: show the ``tokenizers`` progress bar.
        model_max_length: the context length recorded in the tokenizer (set it to the model's).
        length: number of texts, if known (only for the progress bar).

    Returns:
        A ``PreTrainedTokenizerFast`` with ``<|endoftext|>`` as bos/eos/unk (id 0) and ``<|pad|>`` (id 1).
        The vocabulary can be smaller than ``vocab_size`` when the corpus has fewer mergeable pairs.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB_SIZE} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens); use --vocab-size {MIN_VOCAB_SIZE} or more"
        )
    if min_frequency < 1:
        raise ValueError(f"min_frequency={min_frequency} must be >= 1")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    backend.train_from_iterator(_as_strings(texts), trainer=trainer, length=length)
    if backend.get_vocab_size() <= MIN_VOCAB_SIZE:
        logger.warning("the tokenizer learned no merges (empty or tiny corpus): it encodes one token per byte")
    logger.info("trained byte-level BPE: %d tokens (asked for %d)", backend.get_vocab_size(), vocab_size)
    return _wrap(backend, model_max_length)


def _wrap(backend, model_max_length: int) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        add_prefix_space=False,
        clean_up_tokenization_spaces=False,
        model_max_length=model_max_length,
    )
    # Sanity: the fixed ids the model config relies on.
    assert tok.convert_tokens_to_ids(EOS_TOKEN) == 0 and tok.convert_tokens_to_ids(PAD_TOKEN) == 1
    return tok


def special_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int | None]:
    """The ids a model config needs: ``{"bos_token_id", "eos_token_id", "pad_token_id"}``."""
    return {
        "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def load_tokenizer(name_or_path: str, revision: str | None = None) -> PreTrainedTokenizerFast:
    """Load a tokenizer from a local folder (as written by ``save_pretrained``) or a Hub id.

    A tokenizer without a pad token gets its eos token as pad (GPT-2 convention); one without an eos
    token is rejected because packing joins documents with it.
    """
    if os.path.isdir(name_or_path) and not any(
        os.path.exists(os.path.join(name_or_path, f)) for f in ("tokenizer.json", "tokenizer_config.json")
    ):
        raise FileNotFoundError(
            f"{name_or_path} is a folder without tokenizer.json or tokenizer_config.json; "
            "pass a folder written by `scratch-gpt train-tokenizer` or save_pretrained"
        )
    tok = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{name_or_path} has no fast (tokenizers) tokenizer; scratch-gpt needs tokenizer.json")
    if tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer {name_or_path} has no eos token; documents are joined with it. "
            "Train one with `scratch-gpt train-tokenizer` or set eos_token in its tokenizer_config.json"
        )
    if tok.pad_token_id is None:
        logger.info("tokenizer %s has no pad token: using its eos token %r as pad", name_or_path, tok.eos_token)
        tok.pad_token = tok.eos_token
    return tok
