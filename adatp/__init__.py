"""adatp: Attention-Debiased Token Pruning (AdaTP, arXiv 2505.20100) for transformers Video LLMs.

Our reconstruction from the paper's description; see README "AdaTP as we implement it".
"""

from adatp.config import AdaTPConfig, ConfigError
from adatp.flops import flops_ratio, prefill_flops, retention_for_budget
from adatp.prefix import Prefix, encode_prefix, suffix_position_ids, use_prefix
from adatp.presets import Preset, load_preset, save_preset, select_preset
from adatp.pruned_lm import disable, enable, pruning
from adatp.select import select_visual_tokens
from adatp.state import state_of

__version__ = "0.1.0"

__all__ = [
    "AdaTPConfig",
    "ConfigError",
    "Prefix",
    "Preset",
    "disable",
    "enable",
    "encode_prefix",
    "flops_ratio",
    "load_preset",
    "prefill_flops",
    "pruning",
    "retention_for_budget",
    "save_preset",
    "select_preset",
    "select_visual_tokens",
    "state_of",
    "suffix_position_ids",
    "use_prefix",
]
