"""Tokenizer training: byte-exact round trips, reload through AutoTokenizer, fixed special-token ids."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from training.data.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer, special_token_ids, train_tokenizer

ROUND_TRIP = [
    "",
    "plain ascii text",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n and \x00 \x01 \x1b[31m control \x7f characters",
    "emoji 😀🧑‍🤝‍🧑🇫🇷 and CJK 日本語 中文 한국어",
    "combining e\u0301 zero\u200bwidth \ufeff bom, rtl עברית العربية",
    "x <|endoftext|> y <|pad|> z",
    "\U0010ffff\U0001f600" * 3,
]

pytestmark = pytest.mark.usefixtures("isolated_datasets_cache")


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip_is_byte_exact(tiny_tokenizer, text):
    ids = tiny_tokenizer(text)["input_ids"]
    assert tiny_tokenizer.unk_token_id not in ids or EOS_TOKEN in text  # bytes never fall back to unk
    assert tiny_tokenizer.decode(ids) == text
    assert tiny_tokenizer.decode(ids).encode("utf-8") == text.encode("utf-8")


def test_special_token_ids_are_fixed(tiny_tokenizer):
    assert tiny_tokenizer.convert_tokens_to_ids(EOS_TOKEN) == 0
    assert tiny_tokenizer.convert_tokens_to_ids(PAD_TOKEN) == 1
    ids = special_token_ids(tiny_tokenizer)
    assert ids == {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1}
    assert tiny_tokenizer.eos_token == tiny_tokenizer.bos_token == EOS_TOKEN
    assert tiny_tokenizer.pad_token == PAD_TOKEN
    # No bos/eos is silently added around a text: packing adds EOS itself.
    assert tiny_tokenizer("a")["input_ids"] == tiny_tokenizer.convert_tokens_to_ids(["a"])


def test_learns_merges_and_respects_vocab_size(tiny_tokenizer, tiny_docs):
    assert 258 < len(tiny_tokenizer) <= 400
    text = tiny_docs[0]
    assert len(tiny_tokenizer(text)["input_ids"]) < len(text.encode("utf-8"))  # merges compress


def test_reloads_through_auto_tokenizer(tiny_tokenizer, tmp_path):
    tiny_tokenizer.save_pretrained(tmp_path)
    for loaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))):
        assert isinstance(loaded, PreTrainedTokenizerFast)
        assert loaded.get_vocab() == tiny_tokenizer.get_vocab()
        assert special_token_ids(loaded) == special_token_ids(tiny_tokenizer)
        for text in ROUND_TRIP:
            assert loaded(text)["input_ids"] == tiny_tokenizer(text)["input_ids"]
            assert loaded.decode(loaded(text)["input_ids"]) == text


def test_special_ids_match_a_model_config(tiny_tokenizer):
    scratch_gpt = pytest.importorskip("scratch_gpt")
    if not hasattr(scratch_gpt, "ScratchGPTConfig"):  # the model is written in parallel; runs once it lands
        pytest.skip("scratch_gpt.ScratchGPTConfig not available yet")
    cfg = scratch_gpt.ScratchGPTConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, max_position_embeddings=16,
                                       **special_token_ids(tiny_tokenizer))
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (0, 0, 1)


def test_too_small_vocab_is_rejected():
    with pytest.raises(ValueError, match="at least 258"):
        train_tokenizer(["abc"], vocab_size=100)


def test_non_string_text_is_rejected():
    with pytest.raises(ValueError, match="not a str"):
        train_tokenizer(["ok", b"bytes"], vocab_size=300)


def test_load_tokenizer_rejects_folder_without_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(str(tmp_path))
