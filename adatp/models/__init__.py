"""Model adapters: one small module per Video LLM family around the shared pruned-LM forward (`adatp.pruned_lm`).

An adapter answers only what differs between families: which model classes it takes, where a call's video tokens
are and how they group into videos and frames (`video_call`), which tokens are never pruned (they count as text),
how positions are built (`positions`: 1D RoPE, or M-RoPE's 3D ids), and which config options it cannot honour
(`check`). The contract is `adatp.models.base.ModelAdapter`. Everything else (scoring, selection, gathering,
masks, caches, decoding) is shared.
"""

from __future__ import annotations

from adatp.models.llava_onevision import LlavaOnevisionAdapter
from adatp.models.qwen3_5 import Qwen3_5Adapter, Qwen3_5MoeAdapter
from adatp.models.qwen_vl import Qwen2_5_VLAdapter, Qwen3VLAdapter

# Qwen3_5MoeModel subclasses Qwen3_5Model: the MoE adapter is asked first.
ADAPTERS = (LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter, Qwen3_5MoeAdapter, Qwen3_5Adapter)
SUPPORTED = tuple(name for adapter in ADAPTERS for name in adapter.class_names)

__all__ = ["ADAPTERS", "SUPPORTED", "adapter_for", "family_of", "multimodal_of"]


def _find(model):
    for adapter in ADAPTERS:
        inner = adapter.multimodal(model)
        if inner is not None:
            return adapter, inner
    raise TypeError(f"adatp supports {', '.join(SUPPORTED)} (or their inner models); got {type(model).__name__}")


def adapter_for(model):
    """The adapter for `model` (a supported `...ForConditionalGeneration` or its inner multimodal model)."""
    adapter, inner = _find(model)
    return adapter(inner)


def multimodal_of(model):
    """The inner multimodal model (the one holding `language_model`) of a supported model."""
    return _find(model)[1]


def family_of(model) -> str:
    """The adapter's family name for `model`: 'llava_onevision', 'qwen2_5_vl', 'qwen3_vl', 'qwen3_5' or
    'qwen3_5_moe'."""
    return _find(model)[0].family
