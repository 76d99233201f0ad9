"""Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's video layout (timestamp text before each temporal group, M-RoPE with
`rope_deltas`) on a hybrid language model, no deepstack.

Most language-model layers are Gated DeltaNet (linear attention: a conv state and a recurrent state, no attention
weights); every 4th (by default) is full attention with a gated `q_proj` and partial rotary. What that changes is
shared, by layer kind (`adatp.kinds`): in-LLM pruning needs attention at layer K-1, so K must follow a
full-attention layer (`adatp.enable` names the valid K); linear layers >= K run on the kept tokens and keep the
states of the kept sequence; the prefix cache does not store linear states, so trials run without it.
"""

from __future__ import annotations

from adatp.models.qwen_vl import QwenAdapter


class Qwen3_5Adapter(QwenAdapter):
    family = "qwen3_5"
    class_names = ("Qwen3_5ForConditionalGeneration",)
    inner_class_name = "Qwen3_5Model"


class Qwen3_5MoeAdapter(QwenAdapter):
    family = "qwen3_5_moe"
    class_names = ("Qwen3_5MoeForConditionalGeneration",)
    inner_class_name = "Qwen3_5MoeModel"
