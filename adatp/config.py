"""`AdaTPConfig`: the pruning settings, with range validation that names the field it rejects."""

from __future__ import annotations

import dataclasses
from typing import Any

from adatp import validation
from adatp.validation import ConfigError

METHODS = ("adatp", "uniform", "random", "fastv", "adatp_random_segments")
SCORES = ("attention", "norm", "text_sim")
RELEVANCES = ("llm", "siglip")
POSITIONS = ("original", "renumber")
# Methods whose selection reads per-token scores (uniform and random do not).
SCORED_METHODS = ("adatp", "fastv", "adatp_random_segments")


@dataclasses.dataclass(frozen=True)
class AdaTPConfig:
    """AdaTP settings. Every field has a default: our starting guess at the paper's setting.

    tau_s: segmentation threshold on the cosine similarity of consecutive frames, in [-1, 1]; a new segment
        starts after frame i when cos(g_i, g_i+1) < tau_s (higher -> more segments).
    tau_t: text-relevance threshold on min-max normalised segment relevance, in [0, 1].
    alpha_boost: budget weight multiplier for relevant segments, in [1, 100].
    gamma_cap: spatial cap; one position is kept in at most ceil(gamma_cap * |segment|) frames, in (0, 1].
    retention: share of visual tokens kept, in (0, 1]; kept count M = max(1, round(retention * F * N)).
    prune_layer: LM layer before which tokens are dropped (0 = before the LM), >= 0.
    score: per-token score source: `attention` (last text tokens' attention at layer prune_layer - 1),
        `norm` (hidden-state L2 norm) or `text_sim` (cosine to the mean question embedding).
    relevance: space of the frame/question features for segmentation and relevance: `llm` or `siglip`.
    method: `adatp` or a baseline (`uniform`, `random`, `fastv`, `adatp_random_segments`).
    seed: seed for `random` and `adatp_random_segments`.
    positions: `original` (kept tokens keep their RoPE positions) or `renumber` (contiguous after pruning).
    siglip_path: local SigLIP checkpoint directory, required when relevance is `siglip`.
    """

    tau_s: float = 0.9
    tau_t: float = 0.5
    alpha_boost: float = 2.0
    gamma_cap: float = 0.5
    retention: float = 0.25
    prune_layer: int = 2
    score: str = "attention"
    relevance: str = "llm"
    method: str = "adatp"
    seed: int = 0
    positions: str = "original"
    siglip_path: str | None = None

    def __post_init__(self) -> None:
        validate(self, where="config")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> AdaTPConfig:
        return dataclasses.replace(self, **changes)

    @property
    def uses_scores(self) -> bool:
        return self.method in SCORED_METHODS

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> AdaTPConfig:
        """Build from a mapping (e.g. a preset's `config:` block); unknown keys and bad values raise ConfigError."""
        validation.mapping(where, data)
        validation.known_keys(where, data, sorted(f.name for f in dataclasses.fields(cls)))
        config = object.__new__(cls)
        merged = {f.name: f.default for f in dataclasses.fields(cls)} | dict(data)
        for name, value in merged.items():
            object.__setattr__(config, name, value)
        validate(config, where=where)
        return config


# The one table of the four thresholds' valid ranges: (low, high, low is open). Specs check their search spaces
# against it (autotune.spec), presets and configs their values (`validate`).
THRESHOLD_RANGES: dict[str, tuple[float, float, bool]] = {
    "tau_s": (-1.0, 1.0, False),
    "tau_t": (0.0, 1.0, False),
    "alpha_boost": (1.0, 100.0, False),
    "gamma_cap": (0.0, 1.0, True),
}


def validate(config: AdaTPConfig, where: str = "config") -> None:
    """Check every field's type and range, then the cross-field rules; raise ConfigError naming the field."""
    for name, (low, high, low_open) in THRESHOLD_RANGES.items():
        validation.number(f"{where}.{name}", getattr(config, name), low, high, low_open=low_open)
    validation.number(f"{where}.retention", config.retention, 0.0, 1.0, low_open=True)
    validation.integer(f"{where}.prune_layer", config.prune_layer, 0, 1024)
    validation.integer(f"{where}.seed", config.seed, 0, 2**63 - 1)
    validation.choice(f"{where}.score", config.score, SCORES)
    validation.choice(f"{where}.relevance", config.relevance, RELEVANCES)
    validation.choice(f"{where}.method", config.method, METHODS)
    validation.choice(f"{where}.positions", config.positions, POSITIONS)
    if config.siglip_path is not None and not isinstance(config.siglip_path, str):
        raise ConfigError(f"{where}.siglip_path: must be a string path, got {type(config.siglip_path).__name__}")
    if config.relevance == "siglip" and not config.siglip_path:
        raise ConfigError(f"{where}.siglip_path: required when relevance is 'siglip'")
    if config.score == "attention" and config.method in SCORED_METHODS and config.prune_layer < 1:
        raise ConfigError(
            f"{where}.prune_layer: score 'attention' reads layer prune_layer - 1, so prune_layer must be >= 1 "
            f"(or use score 'norm' / 'text_sim'), got {config.prune_layer}"
        )
