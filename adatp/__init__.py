"""adatp: Attention-Debiased Token Pruning (AdaTP, arXiv 2505.20100) for transformers Video LLMs.

Our reconstruction from the paper's description; see docs/method.md "AdaTP as we implement it".

The public names load on first use (PEP 562): `import adatp` and `adatp.config`, `adatp.validation`,
`adatp.safe_yaml` import no torch, so a study spec or preset is checked as plain data; `adatp.enable` and the other
tensor functions import torch and transformers when first touched.
"""

from __future__ import annotations

import importlib
import importlib.util

__version__ = "0.1.0"

# Public name -> the module that defines it: the one table `__getattr__` and `__all__` read.
_EXPORTS = {
    "AdaTPConfig": "adatp.config",
    "ConfigError": "adatp.config",
    "Prefix": "adatp.prefix",
    "Preset": "adatp.presets",
    "disable": "adatp.pruned_lm",
    "enable": "adatp.pruned_lm",
    "encode_prefix": "adatp.prefix",
    "flops_ratio": "adatp.flops",
    "load_preset": "adatp.presets",
    "prefill_flops": "adatp.flops",
    "pruning": "adatp.pruned_lm",
    "retention_for_budget": "adatp.flops",
    "save_preset": "adatp.presets",
    "select_preset": "adatp.presets",
    "select_visual_tokens": "adatp.select",
    "state_of": "adatp.state",
    "suffix_position_ids": "adatp.prefix",
    "use_prefix": "adatp.prefix",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        # `adatp.flops.x` after a bare `import adatp` worked when __init__ imported every submodule; keep it working.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
