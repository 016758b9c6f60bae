"""Every CPU kernel ``scratch_gpt.linear`` may choose equals ``F.linear`` in value, shape and gradient."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F

import scratch_gpt.linear as linear_module
from scratch_gpt.kernel_choice import CHOOSER, forced
from scratch_gpt.linear import FEW_ROWS, Linear, linear, matmul_weight

FP32_EPS = torch.finfo(torch.float32).eps


def rounding_tolerance(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       eps: float = FP32_EPS) -> float:
    """How far two float32 summation orders of ``F.linear(x, weight, bias)`` may differ: Higham's probabilistic
    bound for a dot product of length ``k``, ``sqrt(k) * eps * sum(|x_i * w_i|)``, at its largest output.
    For a low-precision result pass its ``eps`` too: one rounding of the output adds ``eps * |output|``."""
    k = weight.shape[-1]
    x, weight = x.detach().float().abs(), weight.detach().float().abs()
    magnitude = F.linear(x, weight, None if bias is None else bias.detach().float().abs()).max().item()
    return FP32_EPS * (k + 1) ** 0.5 * magnitude + (eps if eps != FP32_EPS else 0.0) * magnitude


def candidates_for(x: torch.Tensor, layer: Linear, grad: bool = False) -> tuple[str, ...]:
    rows = x.numel() // layer.in_features
    return linear_module._candidate_names(rows, layer.weight, layer, grad)


def counting(monkeypatch, name: str) -> list:
    """Count calls of kernel ``name`` (proves the forced path ran)."""
    calls = []
    kernel = linear_module._KERNELS[name]

    def wrapper(*args):
        calls.append(1)
        return kernel(*args)

    monkeypatch.setitem(linear_module._KERNELS, name, wrapper)
    return calls


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 4), (8, 1), (4, 16), (1, FEW_ROWS + 1)])
# in, out: out % 4 != 0 too; 1030 outputs: a tall transposing copy
@pytest.mark.parametrize("features", [(32, 96), (32, 32), (96, 30), (16, 3), (768, 8), (24, 1030)])
@pytest.mark.parametrize("bias", [True, False])
def test_every_candidate_equals_f_linear_without_autograd(monkeypatch, shape, features, bias):
    torch.manual_seed(0)
    in_f, out_f = features
    layer = Linear(in_f, out_f, bias=bias)
    x = torch.randn(*shape, in_f)
    with torch.no_grad():
        want = F.linear(x, layer.weight, layer.bias)
        tolerance = rounding_tolerance(x, layer.weight, layer.bias)
        for name in candidates_for(x, layer):
            calls = counting(monkeypatch, name)
            with forced(name):
                got = layer(x)
            assert calls, name
            assert got.shape == want.shape and got.is_contiguous(), name
            torch.testing.assert_close(got, want, atol=tolerance, rtol=0, msg=name)
        assert torch.equal(layer(x), linear(x, layer.weight, layer.bias, layer))  # measured: the same kernel


def test_candidate_sets_follow_rows_dtype_and_autograd():
    layer = Linear(32, 96)
    onednn = ("onednn",) if linear_module._ONEDNN else ()
    assert candidates_for(torch.randn(1, 32), layer) == ("f_linear", *onednn, "transposed", "row_blocks")
    assert candidates_for(torch.randn(FEW_ROWS, 32), layer) == ("f_linear", *onednn, "transposed")
    assert candidates_for(torch.randn(FEW_ROWS + 1, 32), layer) == ("f_linear", *onednn)
    assert candidates_for(torch.randn(1, 32), layer, grad=True) == ("f_linear", *onednn)
    assert candidates_for(torch.randn(1, 32), Linear(32, 30)) == ("f_linear", *onednn, "transposed")


@pytest.mark.skipif(not linear_module._PACKING, reason="this torch build has no oneDNN weight packing")
@pytest.mark.parametrize("rows", [1, 5, 40])
def test_bf16_candidates_equal_f_linear_and_the_packed_weight_follows_updates(monkeypatch, rows):
    torch.manual_seed(0)
    layer = Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(rows, 64, dtype=torch.bfloat16)
    names = candidates_for(x, layer)
    assert names[0] == "f_linear" and "onednn_packed" in names
    bf16_eps = torch.finfo(torch.bfloat16).eps
    with torch.no_grad():
        for step in range(2):
            want = F.linear(x, layer.weight, layer.bias).float()
            tolerance = rounding_tolerance(x, layer.weight, layer.bias, eps=bf16_eps)
            for name in names:
                calls = counting(monkeypatch, name)
                with forced(name):
                    got = layer(x)
                assert calls and got.dtype == torch.bfloat16
                torch.testing.assert_close(got.float(), want, atol=tolerance, rtol=0, msg=name)
            layer.weight.mul_(2)  # an in-place update: the packed copy must be remade


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows", [2, 40])
def test_linear_keeps_autograd_on_every_candidate(bias, rows):
    torch.manual_seed(0)
    in_f, out_f = 32, 96
    x = torch.randn(rows, in_f, requires_grad=True)
    weight = torch.randn(out_f, in_f, requires_grad=True)
    b = torch.randn(out_f, requires_grad=True) if bias else None
    inputs = [x, weight] + ([b] if bias else [])
    want = F.linear(x, weight, b)
    grad_out = torch.randn_like(want)
    want_grads = torch.autograd.grad(want, inputs, grad_out)
    for name in linear_module._candidate_names(rows, weight, None, True):
        with forced(name):
            got = linear(x, weight, b)
            got_grads = torch.autograd.grad(got, inputs, grad_out)
        assert got.shape == want.shape and got.is_contiguous()
        torch.testing.assert_close(got, want, atol=rounding_tolerance(x, weight, b), rtol=0)
        grad_tolerances = [rounding_tolerance(grad_out, weight.t()),  # dx = g @ W: reduction over out
                           rounding_tolerance(grad_out.t(), x.t()),  # dW = g.T @ x: reduction over rows
                           FP32_EPS * rows ** 0.5 * grad_out.abs().sum(0).max().item()]  # db = sum of g
        for g, w, tol in zip(got_grads, want_grads, grad_tolerances):
            torch.testing.assert_close(g, w, atol=tol, rtol=0, msg=name)


@pytest.mark.parametrize("name", ["mm", "onednn"])
def test_matmul_weight_candidates_equal_the_product(name):
    torch.manual_seed(0)
    grad, weight = torch.randn(40, 96), torch.randn(96, 32)
    with forced(name):
        got = matmul_weight(grad, weight)
    torch.testing.assert_close(got, grad @ weight, atol=rounding_tolerance(grad, weight.t()), rtol=0)


@pytest.mark.parametrize("name", ["plain_copy", "unit_dim_copy"])
def test_transposing_copies_are_exact(name):
    out = torch.randn(1030, 8)
    with forced(name):
        got = linear_module._transposed(out)
    assert got.is_contiguous() and torch.equal(got, out.t())


def test_linear_module_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    ours = Linear(16, 48)
    plain = torch.nn.Linear(16, 48)
    plain.load_state_dict(ours.state_dict())
    assert isinstance(ours, torch.nn.Linear)
    x = torch.randn(3, 16)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), plain(x), atol=rounding_tolerance(x, ours.weight, ours.bias), rtol=0)


def test_other_dtypes_fall_back_to_f_linear():
    x = torch.randn(2, 16, dtype=torch.float64)
    weight = torch.randn(48, 16, dtype=torch.float64)
    assert torch.equal(linear(x, weight), F.linear(x, weight))


def test_strided_input_takes_every_path_correctly():
    torch.manual_seed(0)
    layer = Linear(16, 48, bias=False)
    for rows in (1, 3, FEW_ROWS + 6):
        x = torch.randn(rows, 32)[:, ::2]  # non-contiguous (rows, 16)
        want = F.linear(x, layer.weight)
        for name in candidates_for(x, layer):
            with forced(name), torch.no_grad():
                got = layer(x)
            torch.testing.assert_close(got, want, atol=rounding_tolerance(x, layer.weight), rtol=0, msg=name)


@pytest.mark.parametrize("rows", [1, 3, 80])  # every path yields to autocast
def test_autocast_keeps_f_linear_and_its_dtype(rows):
    x = torch.randn(rows, 32)
    weight = torch.randn(96, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad(), forced("onednn"):
        got = linear(x, weight)
        want = F.linear(x, weight)
    assert got.dtype == want.dtype == torch.bfloat16
    assert torch.equal(got, want)


@pytest.mark.parametrize("bias", [True, False])
def test_row_block_views_follow_weight_updates_and_are_never_copied(bias):
    torch.manual_seed(0)
    layer = Linear(32, 96, bias=bias)
    x = torch.randn(1, 1, 32)
    with torch.no_grad(), forced("row_blocks"):
        first = layer(x)
        torch.testing.assert_close(first, F.linear(x, layer.weight, layer.bias),
                                   atol=rounding_tolerance(x, layer.weight, layer.bias), rtol=0)
        layer.weight.mul_(2)  # an in-place update (an optimizer step): the cached views must follow it
        if bias:
            layer.bias.add_(1)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias),
                                   atol=rounding_tolerance(x, layer.weight, layer.bias), rtol=0)
    assert "row_blocks" in layer._derived
    clone = copy.deepcopy(layer)
    assert clone._derived == {} and pickle.loads(pickle.dumps(layer))._derived == {}
    with torch.no_grad(), forced("row_blocks"):
        assert torch.equal(clone(x), layer(x))


def test_weights_made_under_inference_mode_are_never_cached():
    with torch.inference_mode():
        layer = Linear(32, 96)  # inference tensors: no version counter, so no cached views
        x = torch.randn(1, 32)
        for name in candidates_for(x, layer):
            with forced(name):
                got = layer(x)
            torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias),
                                       atol=rounding_tolerance(x, layer.weight, layer.bias), rtol=0)
    assert layer._derived == {}


def test_measured_choice_is_kept_per_key(monkeypatch):
    monkeypatch.setattr(CHOOSER, "decisions", {})
    layer = Linear(32, 96)
    with torch.no_grad():
        layer(torch.randn(1, 32))
        layer(torch.randn(3, 32))
        layer(torch.randn(3, 32))
    keys = [key for key in CHOOSER.decisions if key[0] == "linear"]
    assert sorted(key[1] for key in keys) == [1, 3]  # one decision per row count, made once
    assert all(key[-1] == torch.get_num_threads() for key in keys)


def test_a_decided_inference_shape_is_memoised_on_the_layer(monkeypatch):
    monkeypatch.setattr(CHOOSER, "decisions", {("linear", 1, 32, 96, True, torch.float32, False, False,
                                                torch.get_num_threads()): "transposed"})
    layer = Linear(32, 96)
    x = torch.randn(1, 1, 32)
    transposed = counting(monkeypatch, "transposed")
    with torch.no_grad():
        want = layer(x)  # decided by linear(), then memoised for this shape
        monkeypatch.setattr(linear_module, "_linear", lambda *args: pytest.fail("the memo was not used"))
        got = layer(x)
        assert len(transposed) == 2
        torch.testing.assert_close(got, want, rtol=0, atol=0)
        torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias),
                                   atol=rounding_tolerance(x, layer.weight, layer.bias), rtol=0)
        with pytest.raises(pytest.fail.Exception):  # new decisions (a cleared chooser): the memo is stale
            CHOOSER.clear()
            layer(x)
    monkeypatch.undo()
    with torch.no_grad(), forced("f_linear"):  # forcing bypasses the memo
        transposed = counting(monkeypatch, "transposed")
        layer(x)
    assert transposed == []


@pytest.mark.skipif(not linear_module._PACKING, reason="this torch build has no oneDNN weight packing")
def test_a_packed_copy_is_freed_once_packing_lost_where_decided(monkeypatch):
    layer = Linear(32, 96).to(torch.bfloat16)
    x = torch.randn(1, 32, dtype=torch.bfloat16)
    key = ("linear", 1, 32, 96, True, torch.bfloat16, False, True, torch.get_num_threads())
    for winner, kept in (("onednn_packed", True), ("f_linear", False)):
        monkeypatch.setattr(CHOOSER, "decisions", {key: winner})
        with torch.no_grad(), forced("onednn_packed"):
            layer(x)  # measuring makes the packed copy
        assert "onednn_packed" in layer._derived
        with torch.no_grad():
            layer(x)
        assert ("onednn_packed" in layer._derived) is kept


@pytest.mark.parametrize("fast", [True, False])
def test_parameters_moved_out_of_the_module_are_read_through_their_attributes(fast):
    """The layer reads ``weight``/``bias`` from ``_parameters`` to skip ``nn.Module.__getattr__``; a
    parametrization (a property in their place) and a bias swapped for a plain tensor must still be used."""
    from torch.nn.utils import parametrize

    class Doubled(torch.nn.Module):
        def forward(self, weight):
            return 2 * weight

    torch.manual_seed(0)
    layer = Linear(16, 8, cpu_fast_paths=fast)
    parametrize.register_parametrization(layer, "weight", Doubled())
    plain_bias = layer.bias.detach() + 1
    del layer.bias
    layer.bias = plain_bias  # an attribute now, no longer in _parameters
    x = torch.randn(3, 16)
    assert "weight" not in layer._parameters and "bias" not in layer._parameters
    with torch.no_grad():
        for rows in (x[:1], x):
            weight = 2 * layer.parametrizations.weight.original
            expected = F.linear(rows, weight, plain_bias)  # a chosen kernel may sum in another order
            torch.testing.assert_close(layer(rows), expected, rtol=0,
                                       atol=rounding_tolerance(rows, weight, plain_bias))
