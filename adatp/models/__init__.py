"""Model adapters: one small module per Video LLM family around the shared pruned-LM forward (`adatp.pruned_lm`).

An adapter answers only what differs between families: which model classes it takes, where a call's video tokens
are and how they group into videos and frames (`video_call`), which tokens are never pruned (they count as text),
how positions are built (`positions`: 1D RoPE, or M-RoPE's 3D ids), and which config options it cannot honour
(`check`). Everything else (scoring, selection, gathering, masks, caches, decoding) is shared.
"""

from __future__ import annotations

from adatp.models.llava_onevision import LlavaOnevisionAdapter
from adatp.models.qwen_vl import Qwen2_5_VLAdapter, Qwen3VLAdapter

ADAPTERS = (LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter)
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
    """The adapter's family name for `model`: 'llava_onevision', 'qwen2_5_vl' or 'qwen3_vl'."""
    return _find(model)[0].family
