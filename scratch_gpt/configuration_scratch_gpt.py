"""Configuration of ScratchGPT, a GPT-2-shaped decoder written from scratch.

Standard transformers names are the fields; GPT-2's names (``n_embd``, ``n_layer``, ``n_head``,
``n_positions``, ...) and the names of "Build a Large Language Model (From Scratch)" (``emb_dim``,
``n_layers``, ``n_heads``, ``context_length``, ``drop_rate``) resolve through ``attribute_map``.
Every value is validated when the config is built; errors name the field and the numbers.
"""

from __future__ import annotations

from transformers import PretrainedConfig
from transformers.activations import ACT2FN

from .mlp import MLP_TYPES
from .positions import ROPE_TYPES, rotary_width

NORM_TYPES = ("layernorm", "rmsnorm")
POSITION_EMBEDDING_TYPES = ("learned", "rope")


class ScratchGPTConfig(PretrainedConfig):
    r"""Configuration for [`ScratchGPTModel`] and its heads.

    Args:
        vocab_size: number of token ids the embedding and LM head cover.
        hidden_size: width of the residual stream (GPT-2 ``n_embd``, book ``emb_dim``).
        num_hidden_layers: number of transformer blocks (``n_layer`` / ``n_layers``).
        num_attention_heads: heads per attention layer; must divide ``hidden_size``.
        intermediate_size: width of the MLP; ``None`` means ``4 * hidden_size``.
        max_position_embeddings: the size of the learned position table ``wpe`` (``n_positions`` /
            ``context_length``), the longest input learned positions accept. With RoPE there is no table: it is the
            length the model was trained for (a longer input runs, with a one-time warning; ``linear``,
            ``dynamic`` and ``yarn`` scaling exist to go past it).
        hidden_act: MLP activation, any name in ``transformers.activations.ACT2FN`` (GPT-2 uses ``gelu_new``,
            which equals ``gelu_pytorch_tanh``). ``"relu2"`` (``relu(x)**2``, Nemotron's and modded-nanogpt's) with
            the plain ``mlp_type="gelu"`` MLP is the ReLU² MLP ``c_proj(relu(c_fc(x))**2)``.
        layer_norm_eps: epsilon of the normalisation layers.
        norm_type: ``"layernorm"`` (GPT-2) or ``"rmsnorm"`` (not expressible as GPT-2).
        attention_dropout / resid_dropout / embd_dropout: dropout on attention weights, on the output of each
            residual branch, and on the embeddings. ``drop_rate=x`` sets all three (the book's name).
        initializer_range: std of the normal init; residual projections get ``std / sqrt(2 * layers)``.
        qkv_bias: bias on the fused query/key/value projection (GPT-2: True; the book's from-scratch default: False).
        tie_word_embeddings: share the token embedding with the LM head.
        position_embedding_type: ``"learned"`` (GPT-2's absolute position table ``wpe``) or ``"rope"`` (rotary
            embeddings on queries and keys, Llama/Qwen; no position table). See docs/family.md.
        rope_parameters: transformers' standard RoPE dict for ``"rope"``: ``rope_theta`` and ``rope_type``
            (``default``, ``linear``, ``dynamic``, ``llama3``, ``yarn``) with that type's fields (``factor``,
            ...), and optionally ``partial_rotary_factor`` (rotate only that fraction of each head). Legacy
            ``rope_theta=`` / ``rope_scaling=`` / ``partial_rotary_factor=`` keyword arguments are folded in.
            Only RoPE configs have the attribute: with learned positions ``hasattr(config, "rope_parameters")``
            is False (transformers reads that attribute's presence as "this model has RoPE"), and RoPE keywords
            given to such a config are dropped.
        num_key_value_heads: key/value heads; ``num_attention_heads`` (default) is multi-head attention, fewer is
            grouped-query attention, 1 is multi-query. Must divide ``num_attention_heads``. The KV cache stores
            these grouped heads.
        head_dim: width of one head; ``None`` means ``hidden_size // num_attention_heads``. Given explicitly it
            may differ from that (Qwen3): queries are ``num_attention_heads * head_dim`` wide.
        mlp_type: ``"gelu"`` (GPT-2's ``c_proj(act(c_fc(x)))``, any ``hidden_act``) or ``"swiglu"`` (the gated
            ``c_proj(act(gate) * up)`` of Llama/Qwen; ``hidden_act="silu"`` makes it SwiGLU).
        attention_bias: bias on the attention output projection ``c_proj`` (GPT-2: True; Llama/Qwen: False).
            ``qkv_bias`` covers the query/key/value projection.
        mlp_bias: bias on the MLP projections (GPT-2: True; Llama/Qwen: False).
        qk_norm: RMSNorm over each head of the queries and keys before RoPE (Qwen3).
        fused_lm_loss: in training mode with labels, compute the LM head and the loss together chunk by chunk
            (no full ``(tokens, vocab)`` logits: less memory, a bit faster; ``outputs.logits`` is then ``None``).
            Evaluation and generation always return logits. Set False to get training logits back.
        zero_init_output_projections: initialise the output projections of every block (``attn.c_proj`` and
            ``mlp.c_proj`` weights) to zero instead of ``std / sqrt(2 * layers)``, so each block starts as the
            identity (modded-nanogpt). An initialisation choice only: loaded weights and the forward are unchanged.
        final_logit_softcapping: ``None`` (default) or a cap ``c > 0``: the LM logits become ``c * tanh(logits / c)``
            before the loss and in generation (Gemma 2's name and formula; the fused loss caps too).
        cpu_fast_paths: use the float32 CPU kernels of ``linear.py`` (few-rows decoding, oneDNN), the fused
            loss's CPU branches and the 64-byte-aligned weight copy after ``from_pretrained``. They give the same
            results up to float rounding; False uses only public torch ops (see docs/backends.md).
    """

    model_type = "scratch_gpt"
    # Tensor parallelism (transformers' tp_plan, vLLM's transformers backend). The fused qkv projection packs
    # q, k and v one after the other, so a plain column split would hand a rank parts of q and k: it is
    # gathered (replicated output) and the output projection splits its input, as Phi-3 does.
    base_model_tp_plan = {
        "h.*.attn.c_attn": "colwise_gather_output",
        "h.*.attn.c_proj": "rowwise_split_input",
        "h.*.mlp.c_fc": "colwise",
        "h.*.mlp.c_proj": "rowwise",
    }
    base_model_pp_plan = {
        "wte": (["input_ids"], ["inputs_embeds"]),
        "h": (["hidden_states", "attention_mask"], ["hidden_states"]),
        "ln_f": (["hidden_states"], ["hidden_states"]),
    }
    keys_to_ignore_at_inference = ["cache", "past_key_values"]
    attribute_map = {
        # GPT-2 names
        "n_embd": "hidden_size",
        "n_layer": "num_hidden_layers",
        "n_head": "num_attention_heads",
        "n_positions": "max_position_embeddings",
        "n_inner": "intermediate_size",
        "layer_norm_epsilon": "layer_norm_eps",
        "activation_function": "hidden_act",
        "attn_pdrop": "attention_dropout",
        "resid_pdrop": "resid_dropout",
        "embd_pdrop": "embd_dropout",
        # "Build a Large Language Model (From Scratch)" names
        "emb_dim": "hidden_size",
        "n_layers": "num_hidden_layers",
        "n_heads": "num_attention_heads",
        "context_length": "max_position_embeddings",
        "drop_rate": "resid_dropout",
        # Llama/Qwen names
        "rms_norm_eps": "layer_norm_eps",
    }

    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-5
    norm_type: str = "layernorm"
    attention_dropout: float | int = 0.0
    resid_dropout: float | int = 0.0
    embd_dropout: float | int = 0.0
    initializer_range: float = 0.02
    qkv_bias: bool = True
    tie_word_embeddings: bool = True
    position_embedding_type: str = "learned"
    # `rope_parameters` is deliberately not a field: a field would exist on every config (see __post_init__).
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    mlp_type: str = "gelu"
    attention_bias: bool = True
    mlp_bias: bool = True
    qk_norm: bool = False
    zero_init_output_projections: bool = False
    final_logit_softcapping: float | None = None
    fused_lm_loss: bool = True
    cpu_fast_paths: bool = True
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        # The book's single `drop_rate` sets every dropout.
        drop_rate = kwargs.pop("drop_rate", None)
        if drop_rate is not None:
            self.attention_dropout = self.resid_dropout = self.embd_dropout = drop_rate
        # RoPE configs get `rope_parameters` before transformers' __post_init__, which folds the legacy keywords
        # into it because the attribute exists; learned-position configs never get the attribute at all.
        rope_parameters = kwargs.pop("rope_parameters", None)
        if self.position_embedding_type == "rope":
            self.rope_parameters = rope_parameters
        else:
            for key in ("rope_theta", "rope_scaling", "partial_rotary_factor"):
                kwargs.pop(key, None)
        super().__post_init__(**kwargs)  # applies GPT-2 / book aliases given as keyword arguments
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        self._derive_attention_shape()
        if self.mlp_type == "swiglu":  # c_fc packs [gate; up]: a plain column split would pair the wrong halves
            self.base_model_tp_plan = {**type(self).base_model_tp_plan, "h.*.mlp.c_fc": "colwise_gather_output",
                                       "h.*.mlp.c_proj": "rowwise_split_input"}
        self.validate_architecture()

    def _derive_attention_shape(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        heads = self.num_attention_heads
        if self.head_dim is None and isinstance(heads, int) and heads > 0 and self.hidden_size % heads == 0:
            self.head_dim = self.hidden_size // heads

    def validate_architecture(self) -> None:
        """Raise ``ValueError`` naming the field and the numbers for any invalid value."""
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "num_key_value_heads",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ScratchGPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.head_dim is None:  # not given, and the heads do not divide the width
            raise ValueError(
                f"ScratchGPTConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads}); {self.hidden_size} / {self.num_attention_heads} = "
                f"{self.hidden_size / self.num_attention_heads:.3g}. Pick a head count that divides the width."
            )
        self._validate_family_switches()
        for name in ("attention_dropout", "resid_dropout", "embd_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"ScratchGPTConfig.{name} must be in [0, 1), got {value!r}.")
        if self.hidden_act not in ACT2FN:
            raise ValueError(
                f"ScratchGPTConfig.hidden_act {self.hidden_act!r} is unknown; use one of transformers' activations "
                f"such as 'gelu_pytorch_tanh', 'gelu_new', 'gelu', 'relu', 'silu'."
            )
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"ScratchGPTConfig.norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"ScratchGPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")
        if not self.initializer_range >= 0:
            raise ValueError(f"ScratchGPTConfig.initializer_range must be >= 0, got {self.initializer_range!r}.")
        self._validate_recipe_switches()

    def _validate_recipe_switches(self) -> None:
        """The small-model recipe switches: zero-initialised output projections and final-logit soft-capping."""
        if not isinstance(self.zero_init_output_projections, bool):
            raise ValueError(
                "ScratchGPTConfig.zero_init_output_projections must be True or False, "
                f"got {self.zero_init_output_projections!r}."
            )
        cap = self.final_logit_softcapping
        if cap is not None and (
            isinstance(cap, bool) or not isinstance(cap, (int, float)) or not 0 < cap < float("inf")
        ):
            raise ValueError(
                f"ScratchGPTConfig.final_logit_softcapping must be None (off) or a finite number > 0 (Gemma 2 "
                f"uses 30.0), got {cap!r}."
            )


    def _validate_family_switches(self) -> None:
        """The Llama/Qwen switches: head shapes, MLP kind, biases, position embeddings and RoPE parameters."""
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) or self.head_dim <= 0:
            raise ValueError(f"ScratchGPTConfig.head_dim must be a positive integer, got {self.head_dim!r}.")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"ScratchGPTConfig.num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}): each key/value head serves a whole group of "
                "query heads. Pick a divisor, e.g. 1 (multi-query) or num_attention_heads (multi-head)."
            )
        if self.mlp_type not in MLP_TYPES:
            raise ValueError(f"ScratchGPTConfig.mlp_type must be one of {MLP_TYPES}, got {self.mlp_type!r}.")
        for name in ("attention_bias", "mlp_bias", "qk_norm", "qkv_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ScratchGPTConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(
                f"ScratchGPTConfig.position_embedding_type must be one of {POSITION_EMBEDDING_TYPES}, "
                f"got {self.position_embedding_type!r}."
            )
        if self.position_embedding_type == "rope":
            self._validate_rope_parameters()

    def _validate_rope_parameters(self) -> None:
        rope = getattr(self, "rope_parameters", None)
        if not isinstance(rope, dict):
            raise ValueError(f"ScratchGPTConfig.rope_parameters must be a dict with RoPE, got {rope!r}.")
        rope_type = rope.get("rope_type")
        if rope_type not in ROPE_TYPES:
            raise ValueError(
                f"ScratchGPTConfig.rope_parameters has rope_type={rope_type!r}, which ScratchGPT does not "
                f"implement; use one of {ROPE_TYPES}."
            )
        self._validate_rotary_width(rope.get("partial_rotary_factor", 1.0), rope_type)
        try:
            self.validate_rope()  # transformers' own checks of the fields each rope_type needs
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"ScratchGPTConfig.rope_parameters {rope!r} are invalid: {error}") from None

    def _validate_rotary_width(self, factor, rope_type: str) -> None:
        """The rotated part of a head: pairs of dimensions, inside the head, more than one pair for ``dynamic``
        (its base exponent is ``d / (d - 2)``)."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise ValueError(f"rope_parameters['partial_rotary_factor'] must be in (0, 1], got {factor!r}.")
        dim, width = int(self.head_dim * factor), rotary_width(self.head_dim, factor)
        if factor == 1 and self.head_dim % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {self.head_dim}.")
        if width > self.head_dim or dim < (3 if rope_type == "dynamic" else 2):
            raise ValueError(
                f"rope_parameters['partial_rotary_factor']={factor} rotates int({self.head_dim} * {factor}) = {dim} "
                f"dimensions (rounded up to {width}) of head_dim={self.head_dim}; it must be at least "
                f"{3 if rope_type == 'dynamic' else 2} and fit in the head."
            )


__all__ = ["ScratchGPTConfig"]
