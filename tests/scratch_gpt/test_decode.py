"""The lean decoding step (scratch_gpt/decode.py): the same logits as the regular forward, for every architecture
switch, and taken only where nothing could tell the difference (hooks, recorded outputs, padding, training)."""

import contextlib
from unittest import mock

import pytest
import torch
import scratch_gpt.decode as decode
from scratch_gpt import ScratchGPTForCausalLM
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import left_padded
from tests.scratch_gpt.test_family import FAMILY

ARCHITECTURES = {
    "gpt2": {},
    "gpt2-eager": dict(attn_implementation="eager"),
    **FAMILY,
    "relu2-softcap": dict(hidden_act="relu2", final_logit_softcapping=30.0),
    "partial-rope": dict(FAMILY["llama-gqa"], partial_rotary_factor=0.5),
}


def _model(name: str) -> ScratchGPTForCausalLM:
    torch.manual_seed(0)
    overrides = dict(ARCHITECTURES[name])
    implementation = overrides.pop("attn_implementation", None)
    model = ScratchGPTForCausalLM(make_tiny_config(**overrides)).eval()
    if implementation:
        model.config._attn_implementation = implementation
    return model


@contextlib.contextmanager
def _counting_lean_steps():
    """Count the calls of decode_hidden made from the model's forward."""
    calls = []
    real = decode.decode_hidden

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    with mock.patch("scratch_gpt.modeling_scratch_gpt.decode_hidden", counted):
        yield calls


def _generate(model, ids, new_tokens=6, **kwargs):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             output_scores=True, return_dict_in_generate=True, **kwargs)
    return out.sequences, torch.stack(out.scores)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("batch", [1, 3])
def test_lean_steps_equal_the_regular_forward(name, batch):
    # The same operations in the same order on the same tensors: equal to the last bit, not just close.
    model = _model(name)
    ids = torch.randint(2, model.config.vocab_size, (batch, 5), generator=torch.Generator().manual_seed(1))
    with _counting_lean_steps() as calls:
        lean_tokens, lean_scores = _generate(model, ids)
    assert len(calls) == 5  # every step after the prompt's
    with decode.regular_decoding(), _counting_lean_steps() as calls:
        tokens, scores = _generate(model, ids)
    assert not calls
    assert torch.equal(lean_tokens, tokens)
    assert torch.equal(lean_scores, scores)


def test_positions_follow_the_cache_when_not_given():
    model = _model("llama-gqa")
    ids = torch.randint(2, 300, (2, 4), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = model(ids, use_cache=True).cache
        step = torch.tensor([[7], [9]])
        regular_cache = model(ids, use_cache=True).cache
        lean = model(step, cache=cache).logits
        with decode.regular_decoding():
            regular = model(step, cache=regular_cache).logits
    assert torch.equal(lean, regular)
    assert cache.get_seq_length() == regular_cache.get_seq_length() == 5


def _hook_on_block(model):
    return model.transformer.h[0].register_forward_hook(lambda *args: None)


@pytest.mark.parametrize(
    "case",
    ["hook on a block", "global hook", "hidden states requested", "left padding", "static cache", "training mode"],
)
def test_regular_forward_where_the_lean_step_could_be_observed(case):
    model = _model("gpt2")
    ids = torch.randint(2, 300, (2, 5), generator=torch.Generator().manual_seed(3))
    kwargs = {}
    with contextlib.ExitStack() as stack:
        if case == "hook on a block":
            stack.callback(_hook_on_block(model).remove)
        elif case == "global hook":
            stack.callback(torch.nn.modules.module.register_module_forward_hook(lambda *args: None).remove)
        elif case == "hidden states requested":
            kwargs["output_hidden_states"] = True
        elif case == "left padding":
            ids, kwargs["attention_mask"] = left_padded([[5, 6, 7, 8, 9], [5, 6, 7]])
        elif case == "static cache":
            kwargs["cache_implementation"] = "static"
        elif case == "training mode":
            model.train()  # dropout is 0 in the tiny config: generation still works, through the regular forward
        calls = stack.enter_context(_counting_lean_steps())
        _generate(model, ids, new_tokens=3, **kwargs)
    assert not calls


def test_hooks_on_inner_projections_still_run():
    # The step calls blocks and attention modules directly but the MLP's projections through __call__: a hook
    # there (PEFT, activation probes) sees every step, and the lean step is still taken.
    model = _model("gpt2")
    seen = []
    handle = model.transformer.h[1].mlp.c_fc.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    ids = torch.randint(2, 300, (1, 5), generator=torch.Generator().manual_seed(4))
    with _counting_lean_steps() as calls:
        _generate(model, ids, new_tokens=4)
    handle.remove()
    assert len(calls) == 3
    assert len(seen) == 4 and seen[-1] == (1, 1, model.config.intermediate_size)
