"""The few-rows CPU path of ``scratch_gpt.linear`` equals ``F.linear`` in value, shape and gradient."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import scratch_gpt.linear as linear_module
from scratch_gpt.linear import FEW_ROWS, Linear, few_rows_limit, linear

FP32_EPS = torch.finfo(torch.float32).eps


def rounding_tolerance(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> float:
    """How far two float32 summation orders of ``F.linear(x, weight, bias)`` may differ: Higham's probabilistic
    bound for a dot product of length ``k``, ``sqrt(k) * eps * sum(|x_i * w_i|)``, at its largest output."""
    k = weight.shape[-1]
    magnitude = F.linear(x.detach().abs(), weight.detach().abs(), None if bias is None else bias.detach().abs())
    return FP32_EPS * (k + 1) ** 0.5 * magnitude.max().item()


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 4), (8, 1), (4, 16), (1, FEW_ROWS + 1)])
# in, out: out % 4 != 0 too; 1030 outputs take the unit-dimension transposing copy
@pytest.mark.parametrize("features", [(32, 96), (32, 32), (96, 30), (16, 3), (768, 8), (24, 1030)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equals_f_linear_without_autograd(monkeypatch, shape, features, bias):
    torch.manual_seed(0)
    in_f, out_f = features
    x = torch.randn(*shape, in_f)
    weight = torch.randn(out_f, in_f)
    b = torch.randn(out_f) if bias else None
    want = F.linear(x, weight, b)
    few_rows = x.numel() // in_f <= few_rows_limit(in_f)
    if few_rows:  # prove the few-rows path ran: F.linear is not reachable from it
        monkeypatch.setattr(linear_module, "F", types.SimpleNamespace(linear=None))
    with torch.no_grad():
        got = linear(x, weight, b)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, atol=rounding_tolerance(x, weight, b), rtol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_linear_keeps_autograd(bias):
    torch.manual_seed(0)
    in_f, out_f = 32, 96
    x = torch.randn(2, in_f, requires_grad=True)
    weight = torch.randn(out_f, in_f, requires_grad=True)
    b = torch.randn(out_f, requires_grad=True) if bias else None
    got = linear(x, weight, b)
    want = F.linear(x, weight, b)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, [x, weight] + ([b] if bias else []), grad_out)
    want_grads = torch.autograd.grad(want, [x, weight] + ([b] if bias else []), grad_out)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_linear_module_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    ours = Linear(16, 48)
    plain = torch.nn.Linear(16, 48)
    plain.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), plain(x), atol=1e-6, rtol=1e-6)


def test_other_dtypes_fall_back_to_f_linear():
    x = torch.randn(2, 16, dtype=torch.float64)
    weight = torch.randn(48, 16, dtype=torch.float64)
    assert torch.equal(linear(x, weight), F.linear(x, weight))


@pytest.mark.skipif(not linear_module._ONEDNN, reason="this torch build has no oneDNN")
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_path_matches_f_linear_in_value_and_gradients(monkeypatch, bias):
    torch.manual_seed(0)
    x = torch.randn(3, FEW_ROWS, 32, requires_grad=True)  # more than FEW_ROWS rows, with autograd
    weight = torch.randn(96, 32, requires_grad=True)
    b = torch.randn(96, requires_grad=True) if bias else None
    want = F.linear(x, weight, b)
    grad_out = torch.randn_like(want)
    inputs = [x, weight] + ([b] if bias else [])
    want_grads = torch.autograd.grad(want, inputs, grad_out)
    monkeypatch.setattr(linear_module, "F", types.SimpleNamespace(linear=None))  # the oneDNN path must run
    got = linear(x, weight, b)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for g, w in zip(torch.autograd.grad(got, inputs, grad_out), want_grads):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_strided_input_takes_either_path_correctly():
    torch.manual_seed(0)
    weight = torch.randn(48, 16)
    for rows in (3, FEW_ROWS + 6):
        x = torch.randn(rows, 32)[:, ::2]  # non-contiguous (rows, 16)
        torch.testing.assert_close(linear(x, weight), F.linear(x, weight), atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(linear(x, weight), F.linear(x, weight), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rows", [1, 3, 80])  # the few-rows path and the oneDNN path both yield to autocast
def test_autocast_keeps_f_linear_and_its_dtype(rows):
    x = torch.randn(rows, 32)
    weight = torch.randn(96, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        got = linear(x, weight)
        want = F.linear(x, weight)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


def test_few_rows_limit_is_narrower_for_wide_weights():
    assert few_rows_limit(256) == FEW_ROWS == 8 and few_rows_limit(768) == 4


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("out_f", [96, 30])  # 30: not a multiple of the row blocks, linear() decides
def test_single_row_module_path_equals_linear_and_follows_weight_updates(bias, out_f):
    import copy
    import pickle

    torch.manual_seed(0)
    layer = Linear(32, out_f, bias=bias)
    x = torch.randn(1, 1, 32)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(first, linear(x, layer.weight, layer.bias))  # same numbers as the function
        torch.testing.assert_close(first, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
        layer.weight.mul_(2)  # an in-place update (an optimizer step): the cached views must follow it
        if bias:
            layer.bias.add_(1)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
    assert (layer._row_views[1] is not None) == (out_f % 4 == 0)  # blocks only where the rows split evenly
    clone = copy.deepcopy(layer)
    assert clone._row_views is None and pickle.loads(pickle.dumps(layer))._row_views is None
    with torch.no_grad():
        assert torch.equal(clone(x), layer(x))


def test_single_row_module_path_steps_aside_for_grad_and_other_dtypes():
    layer = Linear(32, 96)
    x = torch.randn(1, 32, requires_grad=True)
    out = layer(x)  # with autograd: the function's own path, gradients flow
    out.sum().backward()
    assert x.grad is not None and layer._row_views is None
    with torch.no_grad():
        half = layer.to(torch.bfloat16)(x.detach().bfloat16())
    assert half.dtype == torch.bfloat16


def test_single_row_module_path_with_weights_made_under_inference_mode():
    with torch.inference_mode():
        layer = Linear(32, 96)  # inference tensors: no version counter, so no cached views
        x = torch.randn(1, 32)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)
