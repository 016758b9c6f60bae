"""What vLLM's transformers backend does with a model, done without vLLM (it needs a GPU).

It builds the bare model from the exported repo's remote code with ``AutoModel.from_config(config,
trust_remote_code=True)``, registers its own attention function through ``AttentionInterface.register``,
packs all requests into one row (``input_ids`` ``[1, total_tokens]``) with ``position_ids`` restarting at 0 per
request, and calls ``model(input_ids, position_ids=..., use_cache=False, return_dict=False)``; its attention
function does the per-request masking from its own metadata. For tensor parallelism it replaces the
``nn.Linear`` layers named by ``base_model_tp_plan``; pipeline parallelism needs the layers in one ModuleList.
"""

import re
from contextlib import contextmanager

import pytest
import torch
from torch import nn
from transformers import AttentionInterface, AutoConfig, AutoModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from hub_export.remote_code import write_remote_code
from scratch_gpt import ScratchGPTConfig, ScratchGPTForCausalLM
from tests.conftest import make_tiny_config
from tests.scratch_gpt.helpers import assert_logits_close

LENGTHS = (5, 9)  # two requests packed into one row


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("remote-code-repo")
    torch.manual_seed(0)
    source = ScratchGPTForCausalLM(make_tiny_config()).eval()
    source.save_pretrained(folder)
    write_remote_code(folder, ScratchGPTConfig)
    return folder, source


class BlockDiagonalProbe:
    """An attention function as vLLM registers one: causal attention within each packed request."""

    def __init__(self, lengths):
        self.lengths = lengths
        self.layers = []

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        self.layers.append(module.layer_idx)
        assert attention_mask is None  # no mask function is registered for the probe: the model builds none
        outputs, start = [], 0
        for n in self.lengths:  # query/key/value: (1, heads, total, head_dim)
            q, k, v = (t[:, :, start : start + n] for t in (query, key, value))
            outputs.append(torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling))
            start += n
        return torch.cat(outputs, dim=2).transpose(1, 2), None  # (1, total, heads, head_dim)


@contextmanager
def _as_in_a_process_without_scratch_gpt():
    # `import scratch_gpt` registered our classes, and transformers prefers registered code to a repo's remote
    # code; vLLM's process has no scratch_gpt, so hide the registration to load the exported code.
    config_class = CONFIG_MAPPING._extra_content.pop(ScratchGPTConfig.model_type)
    model_class = MODEL_MAPPING._extra_content.pop(ScratchGPTConfig)
    try:
        yield
    finally:
        CONFIG_MAPPING._extra_content[ScratchGPTConfig.model_type] = config_class
        MODEL_MAPPING._extra_content[ScratchGPTConfig] = model_class


def _vllm_style_model(folder, source, probe_name):
    with _as_in_a_process_without_scratch_gpt():
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        model = AutoModel.from_config(config, trust_remote_code=True, attn_implementation=probe_name)
    missing, unexpected = model.load_state_dict(source.transformer.state_dict(), strict=True)
    assert not missing and not unexpected
    return model.eval()


def test_packed_requests_with_a_registered_probe_equal_each_request_alone(exported):
    folder, source = exported
    probe = BlockDiagonalProbe(LENGTHS)
    AttentionInterface.register("vllm_probe", probe)
    model = _vllm_style_model(folder, source, "vllm_probe")
    assert type(model).__module__.startswith("transformers_modules")  # the exported code, not our package
    assert type(model)._supports_attention_backend is True

    torch.manual_seed(5)
    requests = [torch.randint(2, 320, (n,)) for n in LENGTHS]
    input_ids = torch.cat(requests)[None]  # (1, total)
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]  # restarts at 0 for the second request
    with torch.no_grad():
        packed = model(input_ids, position_ids=position_ids, use_cache=False, return_dict=False)[0]
    assert probe.layers == list(range(model.config.num_hidden_layers))  # once per layer, layer_idx set

    start = 0
    for request in requests:
        with torch.no_grad():
            alone = source.transformer(request[None], use_cache=False).last_hidden_state
        assert_logits_close(packed[:, start : start + len(request)], alone, source.config, sum(LENGTHS))
        start += len(request)


def test_packed_positions_without_a_probe_give_block_diagonal_attention_too(exported):
    _, source = exported
    requests = [torch.randint(2, 320, (n,)) for n in LENGTHS]
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    for implementation in ("sdpa", "eager"):
        source.set_attn_implementation(implementation)
        with torch.no_grad():
            packed = source.transformer(torch.cat(requests)[None], position_ids=position_ids).last_hidden_state
            first = source.transformer(requests[0][None]).last_hidden_state
            second = source.transformer(requests[1][None]).last_hidden_state
        assert_logits_close(packed, torch.cat([first, second], dim=1), source.config)
    source.set_attn_implementation("sdpa")


def test_only_linear_layers_carry_shardable_weights_and_layers_live_in_one_module_list(exported):
    folder, source = exported
    model = _vllm_style_model(folder, source, "sdpa")
    config = model.config
    for name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if own:
            assert isinstance(module, (nn.Linear, nn.Embedding, nn.LayerNorm, nn.RMSNorm)), name
    module_lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    assert [n for n, _ in module_lists] == ["h"]
    assert len(module_lists[0][1]) == config.num_hidden_layers
    plan = type(config).base_model_tp_plan
    assert set(plan.values()) <= {"colwise", "rowwise", "colwise_gather_output", "rowwise_split_input"}
    for pattern in plan:
        regex = re.compile("^" + re.escape(pattern).replace(r"\*", r"\d+") + "$")
        matched = [m for n, m in model.named_modules() if regex.match(n)]
        assert len(matched) == config.num_hidden_layers and all(isinstance(m, nn.Linear) for m in matched), pattern
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    block_matrices = [p for n, p in model.h.named_parameters() if p.dim() == 2]
    assert all(id(p) in linear_weights for p in block_matrices)  # every matrix in the blocks is an nn.Linear's
    assert set(type(config).base_model_pp_plan) == {"wte", "h", "ln_f"}
    assert all(hasattr(model, name) for name in type(config).base_model_pp_plan)
