"""The checks of transformers' common model tests that apply to our three classes, reproduced.

transformers' ``ModelTesterMixin`` (tests/test_modeling_common.py) and ``GenerationTesterMixin``
(tests/generation/test_utils.py) are not installed with the package, so the applicable checks are written out
here against the installed transformers: required class attributes, the cache-argument deprecation, save/load,
cached == uncached, attention and hidden-state outputs (captured by transformers' output-recording hooks),
tuple outputs, gradients, generate() dict outputs, generation from embeddings and from a returned cache, a
fullgraph-compiled static-cache generate(), and which configs the RoPE tests run on (the RoPE cases themselves
are reproduced in test_rope_scaling.py).
"""

import warnings

import pytest
import torch

from scratch_gpt import ScratchGPTForCausalLM, ScratchGPTForSequenceClassification, ScratchGPTModel
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import compiled_static_and_eager_generation

CLASSES = [ScratchGPTModel, ScratchGPTForCausalLM, ScratchGPTForSequenceClassification]
LAYERS, HEADS, WIDTH = 2, 4, 32


def _model(cls, **overrides):
    torch.manual_seed(0)
    return cls(make_tiny_config(**overrides)).eval()


def _main_output(output):
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output.logits


@pytest.mark.parametrize("cls", CLASSES)
def test_required_class_attributes(cls):
    assert cls._supports_attention_backend is True
    assert cls._can_compile_fullgraph is True
    assert cls._supports_sdpa and cls._supports_flex_attn and cls._supports_flash_attn
    assert set(cls._can_record_outputs) == {"hidden_states", "attentions"}
    assert cls._can_set_attn_implementation()
    assert cls.supports_gradient_checkpointing and cls._no_split_modules == ["ScratchGPTBlock"]


@pytest.mark.parametrize("cls", CLASSES)
def test_past_key_values_is_a_deprecated_alias_with_a_future_warning(cls):
    model = _model(cls)
    ids = torch.randint(2, 320, (1, 8))
    prefix = model(ids[:, :5], use_cache=True)
    with pytest.warns(FutureWarning, match="past_key_values.*deprecated"):
        via_alias = model(ids[:, 5:], past_key_values=prefix.cache, use_cache=True)
    prefix = model(ids[:, :5], use_cache=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        via_cache = model(ids[:, 5:], cache=prefix.cache, use_cache=True)
    torch.testing.assert_close(_main_output(via_alias), _main_output(via_cache), atol=0, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
def test_save_and_load_give_identical_outputs(cls, tmp_path):
    model = _model(cls)
    ids = torch.randint(2, 320, (2, 7))
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    assert type(loaded) is cls
    torch.testing.assert_close(_main_output(loaded(ids)), _main_output(model(ids)), atol=0, rtol=0)


@pytest.mark.parametrize("cls", [ScratchGPTModel, ScratchGPTForCausalLM])
def test_cached_forward_equals_uncached(cls):
    model = _model(cls)
    ids = torch.randint(2, 320, (2, 12))
    full = _main_output(model(ids, use_cache=False))
    prefix = model(ids[:, :7], use_cache=True)
    step = model(ids[:, 7:], cache=prefix.cache, use_cache=True)
    torch.testing.assert_close(_main_output(step), full[:, 7:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_outputs_have_one_causal_map_per_layer(cls, implementation):
    model = _model(cls)
    model.set_attn_implementation(implementation)
    ids = torch.randint(2, 320, (2, 10))
    out = model(ids, output_attentions=True)
    assert len(out.attentions) == LAYERS
    for weights in out.attentions:
        assert weights.shape == (2, HEADS, 10, 10)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, HEADS, 10))
        assert torch.all(weights.triu(1) == 0)
    assert model(ids).attentions is None  # nothing recorded unless asked


def test_attention_outputs_with_a_cache_cover_the_cached_keys():
    model = _model(ScratchGPTForCausalLM, output_attentions=True)  # the config flag works like the argument
    ids = torch.randint(2, 320, (1, 9))
    prefix = model(ids[:, :6], use_cache=True)
    step = model(ids[:, 6:], cache=prefix.cache, use_cache=True)
    assert [w.shape for w in step.attentions] == [(1, HEADS, 3, 9)] * LAYERS


@pytest.mark.parametrize("cls", CLASSES)
def test_hidden_states_are_embeddings_then_one_per_layer(cls):
    model = _model(cls)
    ids = torch.randint(2, 320, (2, 6))
    out = model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == LAYERS + 1
    assert all(h.shape == (2, 6, WIDTH) for h in out.hidden_states)
    base = model if cls is ScratchGPTModel else model.transformer
    embeddings = base.wte(ids) + base.wpe(torch.arange(6))[None]
    torch.testing.assert_close(out.hidden_states[0], embeddings, atol=0, rtol=0)
    torch.testing.assert_close(out.hidden_states[-1], base(ids).last_hidden_state, atol=0, rtol=0)
    assert model(ids).hidden_states is None


@pytest.mark.parametrize("cls", CLASSES)
def test_return_dict_false_gives_the_tuple_of_the_output(cls):
    model = _model(cls)
    ids = torch.randint(2, 320, (2, 6))
    as_dict = model(ids, output_hidden_states=True)
    as_tuple = model(ids, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    torch.testing.assert_close(as_tuple[0], as_dict.to_tuple()[0], atol=0, rtol=0)


@pytest.mark.parametrize("cls", [ScratchGPTForCausalLM, ScratchGPTForSequenceClassification])
def test_training_step_reaches_every_parameter(cls):
    model = _model(cls).train()
    ids = torch.randint(2, 320, (2, 8))
    labels = ids if cls is ScratchGPTForCausalLM else torch.tensor([0, 1])
    model(ids, labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_generate_dict_outputs_record_attentions_and_hidden_states_per_step():
    model = _model(ScratchGPTForCausalLM)
    ids = torch.randint(2, 320, (2, 5))
    out = model.generate(
        ids,
        max_new_tokens=3,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=1,
        return_dict_in_generate=True,
        output_attentions=True,
        output_hidden_states=True,
        output_scores=True,
    )
    assert len(out.scores) == len(out.attentions) == len(out.hidden_states) == 3
    assert [w.shape for w in out.attentions[0]] == [(2, HEADS, 5, 5)] * LAYERS
    assert [w.shape for w in out.attentions[2]] == [(2, HEADS, 1, 7)] * LAYERS
    assert [h.shape for h in out.hidden_states[1]] == [(2, 1, WIDTH)] * (LAYERS + 1)


def test_generate_from_inputs_embeds_continues_like_input_ids():
    model = _model(ScratchGPTForCausalLM)
    ids = torch.randint(2, 320, (1, 6))
    kwargs = dict(max_new_tokens=5, do_sample=False, eos_token_id=None, pad_token_id=1)
    from_ids = model.generate(ids, **kwargs)[:, 6:]
    from_embeds = model.generate(inputs_embeds=model.get_input_embeddings()(ids), **kwargs)
    assert torch.equal(from_embeds, from_ids)


def test_generate_continues_from_a_returned_cache():
    model = _model(ScratchGPTForCausalLM)
    ids = torch.randint(2, 320, (1, 6))
    kwargs = dict(do_sample=False, eos_token_id=None, pad_token_id=1)
    whole = model.generate(ids, max_new_tokens=6, **kwargs)
    first = model.generate(ids, max_new_tokens=3, return_dict_in_generate=True, **kwargs)
    rest = model.generate(first.sequences, cache=first.cache, max_new_tokens=3, **kwargs)
    assert torch.equal(rest, whole)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_fullgraph_compiled_static_cache_generate_equals_eager_generate(implementation):
    model = _model(ScratchGPTForCausalLM)
    model.set_attn_implementation(implementation)
    graphs, compiled, eager = compiled_static_and_eager_generation(model)
    assert graphs == 1  # one graph for the decoding step: fullgraph=True would raise on any break
    assert torch.equal(compiled, eager)


@pytest.mark.parametrize("position_embedding_type, has_rope", [("learned", False), ("rope", True)])
def test_rope_tests_run_only_on_rope_configs(position_embedding_type, has_rope):
    # transformers' _config_supports_rope_scaling: `hasattr(config, "rope_parameters")` (or a sub-config's).
    config = make_tiny_config(position_embedding_type=position_embedding_type)
    assert hasattr(config, "rope_parameters") is has_rope and not config.sub_configs
    assert ("rope_parameters" in config.to_dict()) is has_rope
