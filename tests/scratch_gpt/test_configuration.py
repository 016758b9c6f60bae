"""ScratchGPTConfig: standard names, GPT-2 and book aliases, validation with numbers in the message."""

import pytest
import torch

from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from tests.conftest import make_tiny_config


def test_gpt2_and_book_aliases_resolve_to_standard_names():
    gpt2 = ScratchGPTConfig(n_embd=48, n_layer=3, n_head=4, n_positions=40, n_inner=100, vocab_size=10)
    book = ScratchGPTConfig(emb_dim=48, n_layers=3, n_heads=4, context_length=40, drop_rate=0.1, vocab_size=10)
    assert (gpt2.hidden_size, gpt2.num_hidden_layers, gpt2.num_attention_heads) == (48, 3, 4)
    assert (gpt2.max_position_embeddings, gpt2.intermediate_size) == (40, 100)
    assert (book.hidden_size, book.num_hidden_layers, book.num_attention_heads, book.max_position_embeddings) == (
        48,
        3,
        4,
        40,
    )
    assert book.intermediate_size == 4 * 48  # derived from the aliased width, not the default
    assert book.attention_dropout == book.resid_dropout == book.embd_dropout == 0.1
    assert book.n_embd == book.emb_dim == 48 and book.context_length == 40


def test_config_round_trips_through_json(tmp_path):
    config = make_tiny_config(qkv_bias=False, norm_type="rmsnorm", hidden_act="gelu_new")
    config.save_pretrained(tmp_path)
    loaded = ScratchGPTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    "kwargs, fragments",
    [
        (dict(hidden_size=30, num_attention_heads=4), ["hidden_size", "30", "num_attention_heads", "4"]),
        (dict(vocab_size=0), ["vocab_size", "0"]),
        (dict(num_hidden_layers=-2), ["num_hidden_layers", "-2"]),
        (dict(max_position_embeddings=0), ["max_position_embeddings", "0"]),
        (dict(resid_dropout=1.0), ["resid_dropout", "1.0"]),
        (dict(attention_dropout=-0.1), ["attention_dropout", "-0.1"]),
        (dict(embd_dropout=1.5), ["embd_dropout", "1.5"]),
        (dict(hidden_act="swishy"), ["hidden_act", "swishy"]),
        (dict(norm_type="batchnorm"), ["norm_type", "batchnorm"]),
    ],
)
def test_bad_values_raise_value_error_naming_field_and_numbers(kwargs, fragments):
    with pytest.raises(ValueError) as excinfo:
        make_tiny_config(**kwargs)
    for fragment in fragments:
        assert fragment in str(excinfo.value)


def test_sequence_longer_than_context_raises_at_forward():
    model = ScratchGPTForCausalLM(make_tiny_config(max_position_embeddings=16))
    model(torch.zeros(1, 16, dtype=torch.long))  # exactly the context is fine
    with pytest.raises(ValueError, match=r"17.*max_position_embeddings=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
