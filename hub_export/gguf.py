"""Export a scratch-gpt causal LM to one GGUF file for llama.cpp, Ollama, LM Studio and transformers.

The file is written with the ``gguf`` package (llama.cpp's own writer), in llama.cpp's ``gpt2`` architecture,
following what llama.cpp's ``convert_hf_to_gguf.py`` writes for ``GPT2LMHeadModel``:

- hyperparameters ``gpt2.block_count / context_length / embedding_length / feed_forward_length /
  attention.head_count / attention.layer_norm_epsilon`` and ``general.file_type``;
- tensors named by gguf's own map (``token_embd``, ``position_embd``, ``blk.N.attn_norm``, ``attn_qkv``,
  ``attn_output``, ``ffn_norm``, ``ffn_up``, ``ffn_down``, ``output_norm``, ``output`` only when untied), in the
  ``(out, in)`` layout of ``nn.Linear`` (which is what the converter gets after transposing GPT-2's Conv1D);
  a qkv projection without bias gets an exact zero bias, which llama.cpp's graph requires;
- the tokenizer: ``tokenizer.ggml.model = "gpt2"`` (byte-level BPE: the vocabulary as ``tokenizer.json`` spells
  it, the merges, token types NORMAL / CONTROL for special tokens / USER_DEFINED for other added tokens /
  UNUSED for ``[PADn]`` fillers up to the model's vocabulary), bos/eos/pad ids, the chat template; and
  ``tokenizer.ggml.pre = "gpt-2"``, llama.cpp's name for GPT-2's split regex followed by byte-level mapping,
  which is exactly our trained tokenizer's ``ByteLevel(use_regex=True, add_prefix_space=False)``.

Quantization (``--quant``): ``f32``; ``f16`` for matrices; ``q8_0`` for matrices whose rows are a multiple of
32 (the rest f16, as llama.cpp's converter does). Norms, biases and position embeddings stay f32.

Beside ``model.gguf`` go a short README.md and an Ollama ``Modelfile``. The folder is staged and swapped in
whole (:mod:`scratch_gpt.safe_output`), so OUT is absent, the old result, or the complete new one.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

QUANT_TYPES = ("f32", "f16", "q8_0")
GGUF_FILE = "model.gguf"
MODELFILE = "Modelfile"
README_FILE = "README.md"
ARCH = "gpt2"
PRE_TOKENIZER = "gpt-2"  # llama.cpp: GPT-2's regex split, then byte-level (LLAMA_VOCAB_PRE_TYPE_GPT2)
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")  # llama.cpp's ggml_gelu is the tanh approximation
# transformers' GGUF reader builds a GPT2Config from the file but maps neither context_length nor
# feed_forward_length onto it, so it can rebuild only these two values of GPT-2's defaults.
HF_READER_DEFAULTS = {"max_position_embeddings": 1024, "intermediate_ratio": 4}
_PROMPT = "{{ .Prompt }}"
_SYSTEM = "{{ .System }}"


@dataclass
class GGUFExportResult:
    """What a GGUF export wrote."""

    out_dir: Path
    quant: str
    files: list[str]
    tensor_types: dict[str, str]
    seconds: float
    warnings: list[str] = field(default_factory=list)


@dataclass
class GGUFVocab:
    """A byte-level BPE vocabulary in llama.cpp's terms."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    special_ids: dict[str, int]
    chat_template: str | None = None


# --------------------------------------------------------------------------------------------- checks


def check_quant(quant: str) -> str:
    """The quantization name, or ValueError listing the valid ones."""
    if quant not in QUANT_TYPES:
        raise ValueError(f"unknown --quant {quant!r}; use one of {', '.join(QUANT_TYPES)}")
    return quant


def check_gguf_config(config: Any) -> list[str]:
    """Refuse what llama.cpp's gpt2 graph cannot run (ValueError with the reason); return warnings."""
    from scratch_gpt.convert import gpt2_config_from_scratch

    try:
        gpt2_config_from_scratch(config)  # refuses RMSNorm and every switch GPT-2 has no place for
    except ValueError as err:
        raise ValueError(f"GGUF (llama.cpp's gpt2 architecture) cannot hold this model: {err}") from None
    if config.hidden_act not in TANH_GELU:
        raise ValueError(
            f"GGUF (llama.cpp's gpt2 architecture) cannot express hidden_act={config.hidden_act!r}: its MLP "
            f"uses tanh-approximated GELU ({' / '.join(TANH_GELU)}). Export in the remote-code format instead."
        )
    warnings = []
    if (
        config.max_position_embeddings != HF_READER_DEFAULTS["max_position_embeddings"]
        or config.intermediate_size != HF_READER_DEFAULTS["intermediate_ratio"] * config.hidden_size
    ):
        warnings.append(
            "llama.cpp and Ollama read this file fully, but transformers' GGUF reader assumes GPT-2's context of "
            "1024 and MLP width 4 x hidden for the gpt2 architecture; this model has context "
            f"{config.max_position_embeddings} and MLP width {config.intermediate_size}, so "
            "from_pretrained(gguf_file=...) cannot load it"
        )
    return warnings


def _check_byte_level(spec: dict[str, Any]) -> None:
    """ValueError unless ``tokenizer.json`` describes byte-level BPE with GPT-2's pre-tokenization."""
    model = spec.get("model") or {}
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
        pre = pre["pretokenizers"][0]
    problems = []
    if model.get("type") != "BPE":
        problems.append(f"model {model.get('type')!r} (needs BPE)")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("byte_fallback"):
        problems.append("subword prefix/suffix or byte fallback")
    if spec.get("normalizer") is not None:
        problems.append(f"normalizer {spec['normalizer'].get('type')!r}")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        problems.append(f"pre-tokenizer {json.dumps(pre)} (needs ByteLevel with GPT-2's regex, no prefix space)")
    if problems:
        raise ValueError(
            "llama.cpp's gpt2 tokenizer cannot express this vocabulary: " + "; ".join(problems)
            + ". Train the tokenizer with `scratch-gpt train-tokenizer` (byte-level BPE) or export in another format."
        )


# --------------------------------------------------------------------------------------------- vocabulary


def _merge_strings(merges: list[Any]) -> list[str]:
    out = []
    for merge in merges:
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2 or any(" " in piece for piece in pair):
            raise ValueError(f"llama.cpp stores merges as 'a b' strings; cannot express the merge {merge!r}")
        out.append(" ".join(pair))
    return out


def _token_table(spec: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens by id, padded with ``[PADn]`` (UNUSED) up to the model's vocabulary, and their types."""
    from gguf import TokenType

    by_id: dict[int, tuple[str, int]] = {i: (t, TokenType.NORMAL) for t, i in spec["model"]["vocab"].items()}
    for added in spec.get("added_tokens", []):
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[added["id"]] = (added["content"], kind)
    if by_id and max(by_id) >= vocab_size:
        raise ValueError(
            f"the tokenizer has token id {max(by_id)} but the model's vocabulary is {vocab_size}; llama.cpp cannot "
            "express ids outside the embedding (resize the model's embeddings to the tokenizer first)"
        )
    table = [by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED)) for i in range(vocab_size)]
    return [t for t, _ in table], [int(k) for _, k in table]


def read_vocab(tokenizer: Any, vocab_size: int) -> GGUFVocab:
    """The tokenizer as llama.cpp's gpt2 vocabulary; ValueError naming what it cannot express."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            "GGUF export needs a fast (tokenizers) byte-level BPE tokenizer; this one has no tokenizer.json"
        )
    spec = json.loads(backend.to_str())
    _check_byte_level(spec)
    tokens, types = _token_table(spec, vocab_size)
    special = {
        name: getattr(tokenizer, f"{name}_token_id")
        for name in ("bos", "eos", "pad", "unk")
        if getattr(tokenizer, f"{name}_token_id", None) is not None
    }
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return GGUFVocab(tokens, types, _merge_strings(spec["model"]["merges"]), special, template)


# --------------------------------------------------------------------------------------------- tensors


def _tensor_name_map(num_layers: int) -> Any:
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, num_layers)


def _gguf_name(name_map: Any, key: str) -> str:
    base, _, suffix = key.rpartition(".")
    mapped = name_map.get_name(base)
    if mapped is None:
        raise ValueError(f"no llama.cpp gpt2 tensor for the weight {key!r}; this model cannot be exported to GGUF")
    return f"{mapped}.{suffix}"


def _state_dict_for_gguf(model: Any) -> dict[str, Any]:
    """Our weights in GPT-2's module names (nn.Linear layout), tied head dropped, zero qkv bias added."""
    import torch

    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for key in [k for k in state if k.endswith("attn.c_attn.weight")]:
        bias_key = key[: -len("weight")] + "bias"
        if bias_key not in state:
            state[bias_key] = torch.zeros(state[key].shape[0], dtype=state[key].dtype)
    return state


def _qtype_for(gguf_name: str, array: Any, quant: str) -> Any:
    """Per-tensor type the way llama.cpp's converter picks it (1D, position embeddings stay f32)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    if quant == "f32" or array.ndim < 2 or gguf_name.startswith("position_embd"):
        return Q.F32
    if quant == "q8_0" and array.shape[-1] % GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return Q.Q8_0
    return Q.F16


def _encode(array: Any, qtype: Any) -> Any:
    import numpy as np
    from gguf import GGMLQuantizationType as Q, quants

    if qtype == Q.F32:
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == Q.F16:
        return array.astype(np.float16)
    return quants.quantize(array, qtype)


def add_tensors(writer: Any, model: Any, quant: str) -> dict[str, str]:
    """Add every weight to ``writer`` under llama.cpp's names; returns {gguf name: type name}."""
    from gguf import GGMLQuantizationType as Q

    name_map = _tensor_name_map(model.config.num_hidden_layers)
    types = {}
    for key, tensor in _state_dict_for_gguf(model).items():
        name = _gguf_name(name_map, key)
        array = tensor.detach().to("cpu").float().contiguous().numpy()
        qtype = _qtype_for(name, array, quant)
        data = _encode(array, qtype)
        writer.add_tensor(name, data, raw_dtype=qtype if qtype not in (Q.F32, Q.F16) else None)
        types[name] = qtype.name
    return types


# --------------------------------------------------------------------------------------------- writing


def _file_type(quant: str) -> Any:
    from gguf import LlamaFileType

    return {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}[quant]


def add_hyperparameters(writer: Any, config: Any, name: str, quant: str) -> None:
    """``general.*`` and ``gpt2.*`` keys as llama.cpp's converter writes them for GPT2LMHeadModel."""
    import gguf

    writer.add_name(name)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_eps(config.layer_norm_eps)
    writer.add_file_type(_file_type(quant))
    if quant == "q8_0":
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def add_vocab(writer: Any, vocab: GGUFVocab) -> None:
    """``tokenizer.ggml.*`` keys and the chat template."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id}
    setters["unk"] = writer.add_unk_token_id
    for name, token_id in vocab.special_ids.items():
        setters[name](token_id)
    writer.add_add_bos_token(False)  # our tokenizer adds no BOS; llama.cpp must not either
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def write_gguf(path: Path, model: Any, vocab: GGUFVocab, quant: str, name: str) -> dict[str, str]:
    """Write the complete GGUF file at ``path``; returns the tensor types."""
    import gguf

    writer = gguf.GGUFWriter(path, ARCH)
    writer_log = logging.getLogger("gguf.gguf_writer")
    level = writer_log.level
    writer_log.setLevel(max(level, logging.WARNING))  # its per-file INFO chatter
    try:
        add_hyperparameters(writer, model.config, name, quant)
        add_vocab(writer, vocab)
        types = add_tensors(writer, model, quant)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
        writer_log.setLevel(level)
    return types


# --------------------------------------------------------------------------------------------- Ollama, README


def _go_template(tokenizer: Any) -> str:
    """An Ollama (Go) template for one turn, rendered from the Jinja chat template with placeholders."""
    if not getattr(tokenizer, "chat_template", None):
        return _PROMPT  # plain completion: the prompt is the text to continue

    def render(messages: list[dict[str, str]]) -> str | None:
        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001  (a template may refuse a system turn; then there is no system slot)
            return None
        return text if isinstance(text, str) and _PROMPT in text else None

    plain = render([{"role": "user", "content": _PROMPT}])
    if plain is None:
        logger.warning("the chat template does not render a user turn verbatim; the Modelfile uses the raw prompt")
        return _PROMPT
    system = render([{"role": "system", "content": _SYSTEM}, {"role": "user", "content": _PROMPT}])
    if system is None or _SYSTEM not in system:
        return plain
    return "{{ if .System }}" + system + "{{ else }}" + plain + "{{ end }}"


def ollama_modelfile(tokenizer: Any, vocab: GGUFVocab) -> str:
    """An Ollama Modelfile: the GGUF beside it, the prompt template and the stop tokens."""
    stops = sorted({vocab.tokens[i] for k, i in vocab.special_ids.items() if k in ("eos", "pad")})
    lines = [f"FROM ./{GGUF_FILE}", f'TEMPLATE """{_go_template(tokenizer)}"""']
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"


def gguf_readme(name: str, quant: str, config: Any, warnings: list[str]) -> str:
    """A short README for the GGUF folder: what it is and how to run it."""
    notes = "".join(f"\n> Note: {w}.\n" for w in warnings)
    return f"""# {name} (GGUF, {quant})

A scratch-gpt model exported to GGUF in llama.cpp's `gpt2` architecture: {config.num_hidden_layers} layers,
width {config.hidden_size}, {config.num_attention_heads} heads, context {config.max_position_embeddings},
vocabulary {config.vocab_size} (byte-level BPE, pre-tokenizer `{PRE_TOKENIZER}`).
{notes}
## llama.cpp

```bash
llama-cli -m {GGUF_FILE} -p "def main():" -n 64 --temp 0
```

## Ollama

```bash
ollama create {name} -f {MODELFILE}
ollama run {name} "def main():"
```

## transformers

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(".", gguf_file="{GGUF_FILE}")
model = AutoModelForCausalLM.from_pretrained(".", gguf_file="{GGUF_FILE}")
```
"""


# --------------------------------------------------------------------------------------------- driver


def _load(model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoTokenizer

    from scratch_gpt import ScratchGPTForCausalLM

    model = ScratchGPTForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def _validate_source(model_dir: Path) -> Any:
    """The model's config after every check that needs no weights (fail before loading anything)."""
    from scratch_gpt import ScratchGPTConfig

    from .export import read_model_config, task_of

    if task_of(read_model_config(model_dir)) != "text-generation":
        raise ValueError("--format gguf exports causal language models only; this folder holds a classifier")
    if not (model_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{model_dir} has no tokenizer.json; a GGUF file carries its tokenizer, so save the model's byte-level "
            "BPE tokenizer (tokenizer.save_pretrained) into the folder first"
        )
    return ScratchGPTConfig.from_pretrained(model_dir)


def export_gguf(
    model_dir: str | Path, out_dir: str | Path, quant: str = "f32", overwrite: bool = False, name: str | None = None
) -> GGUFExportResult:
    """Write OUT_DIR/model.gguf (+ README.md, Modelfile) from a scratch-gpt causal LM folder."""
    from scratch_gpt.safe_output import check_output, staged_output

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    check_quant(quant)
    check_output(out_dir, overwrite=overwrite, inputs=[model_dir])
    warnings = check_gguf_config(_validate_source(model_dir))
    model, tokenizer = _load(model_dir)
    vocab = read_vocab(tokenizer, model.config.vocab_size)
    name = name or out_dir.name
    start = time.perf_counter()
    with staged_output(out_dir, overwrite=overwrite, inputs=[model_dir]) as stage:
        types = write_gguf(stage / GGUF_FILE, model, vocab, quant, name)
        (stage / MODELFILE).write_text(ollama_modelfile(tokenizer, vocab), encoding="utf-8")
        (stage / README_FILE).write_text(gguf_readme(name, quant, model.config, warnings), encoding="utf-8")
    for warning in warnings:
        logger.warning(warning)
    files = sorted(p.name for p in out_dir.iterdir())
    return GGUFExportResult(out_dir, quant, files, types, time.perf_counter() - start, warnings)


__all__ = [
    "GGUF_FILE",
    "MODELFILE",
    "QUANT_TYPES",
    "GGUFExportResult",
    "GGUFVocab",
    "check_gguf_config",
    "check_quant",
    "export_gguf",
    "ollama_modelfile",
    "read_vocab",
    "write_gguf",
]
