"""scratch-gpt: a GPT written from scratch that transformers treats as one of its own.

``import scratch_gpt`` registers the config and models with transformers' Auto classes, so
``AutoModelForCausalLM.from_pretrained(folder)`` and ``pipeline(..., model=folder)`` resolve to them.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_scratch_gpt import ScratchGPTConfig
from .modeling_scratch_gpt import (
    ScratchGPTForCausalLM,
    ScratchGPTForSequenceClassification,
    ScratchGPTModel,
    ScratchGPTPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(ScratchGPTConfig.model_type, ScratchGPTConfig, exist_ok=True)
AutoModel.register(ScratchGPTConfig, ScratchGPTModel, exist_ok=True)
AutoModelForCausalLM.register(ScratchGPTConfig, ScratchGPTForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(ScratchGPTConfig, ScratchGPTForSequenceClassification, exist_ok=True)

__all__ = [
    "ScratchGPTConfig",
    "ScratchGPTForCausalLM",
    "ScratchGPTForSequenceClassification",
    "ScratchGPTModel",
    "ScratchGPTPreTrainedModel",
]
