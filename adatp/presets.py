"""Presets (`format: adatp-preset/v1`): a tuned `AdaTPConfig`, what it was tuned for, what it achieved, and how.

A preset is one YAML file:

    format: adatp-preset/v1
    config: {tau_s: 0.87, tau_t: 0.4, ...}     # AdaTPConfig fields; absent ones take their defaults
    target:                                    # all four required
      model: llava-hf/llava-onevision-qwen2-7b-ov-hf
      dataset: videomme
      frames: 32                               # int >= 1
      flops_budget: 0.3                        # (0, 1]: pruned / vanilla prefill FLOPs the tuner was allowed
    results:                                   # optional, and so is every key in it (absent or null)
      flops_ratio: 0.298                       # (0, 1]: achieved pruned / vanilla prefill FLOPs
      tune_accuracy: {value: 0.61, n: 600, ci95: [0.57, 0.65]}   # value, ci95 in [0, 1]; n >= 0; ci95 optional
      # MLVU also: macro (lmms-eval's mean over its 7 task types, in [0, 1]) and macro_missing (types with no question)
      test_accuracy: {value: 0.60, n: 1200}
      vanilla_accuracy: {value: 0.62, n: 1200}   # unpruned model, same test questions
      default_accuracy: {value: 0.58, n: 1200}   # default AdaTPConfig at the same retention, same questions
      paired: {test_minus_vanilla: -0.02}      # free-form: name -> number or list of numbers
      # An unlabelled table has no accuracy: tune_fidelity, test_fidelity, default_fidelity instead (agreement with
      # the unpruned model on the same questions, same fields as an accuracy).
      scoring: {objective: accuracy, answers: multiple-choice, metric: letter, reference: gold}   # how it was scored
    provenance:                                # optional, and so is every key in it
      study: videomme-b0.30
      trial: 17                                # int >= 0
      mlflow_run_id: 3f2a...
      versions: {torch: 2.13.0, transformers: 5.23.0}   # free-form: package -> version
      created: '2025-06-01T12:00:00+00:00'     # ISO 8601

Unknown keys are errors everywhere except inside `paired` and `versions`. Every error is one `ConfigError` line
that starts with the field's path, e.g. `preset.config.tau_s: must be in [-1, 1], got 1.5 (in x.yaml)`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml

from adatp import safe_yaml, validation
from adatp.config import AdaTPConfig, ConfigError
from adatp.validation import brief

FORMAT = "adatp-preset/v1"
_FORMAT_VERSION = 1
_FORMAT_PATTERN = re.compile(r"adatp-preset/v(\d+)")

_TOP_KEYS = ("format", "config", "target", "results", "provenance")
_TARGET_KEYS = ("model", "dataset", "frames", "flops_budget")
_ACCURACY_KEYS = ("tune_accuracy", "test_accuracy", "vanilla_accuracy", "default_accuracy", "tune_fidelity",
                  "test_fidelity", "default_fidelity")
_RESULT_KEYS = ("flops_ratio", *_ACCURACY_KEYS, "paired", "scoring")
# results.scoring: how answers were scored (objective, multiple-choice or open-ended, the metric, against what).
SCORING = {"objective": ("accuracy", "fidelity"), "answers": ("multiple-choice", "open-ended"),
           "metric": ("letter", "exact_match", "token_f1", "relative_accuracy"), "reference": ("gold", "unpruned")}
_ACCURACY_FIELDS = ("value", "n", "ci95", "macro", "macro_missing")
_PROVENANCE_KEYS = ("study", "trial", "mlflow_run_id", "versions", "created")
# A measured flops_ratio may exceed the budget it was tuned for by float noise alone (0.30000000000000004).
_BUDGET_SLACK = 1e-9


@dataclasses.dataclass
class Preset:
    """A loaded preset. `path` is the file it came from (None if built in code); it takes no part in equality."""

    config: AdaTPConfig
    target: dict[str, Any]
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: str | None = dataclasses.field(default=None, compare=False)

    @property
    def flops_ratio(self) -> float:
        """Achieved pruned / vanilla prefill FLOPs; the target budget when the preset carries no measurement."""
        measured = self.results.get("flops_ratio")
        return measured if measured is not None else self.target["flops_budget"]

    @property
    def test_accuracy(self) -> float | None:
        """Held-out test accuracy in [0, 1], or None when not measured."""
        accuracy = self.results.get("test_accuracy")
        return None if accuracy is None else accuracy["value"]

    @property
    def held_out(self) -> tuple[str, dict[str, Any] | None, dict[str, Any] | None, dict[str, Any] | None]:
        """`held_out_view` of this preset's results."""
        return held_out_view(self.results)

    @property
    def test_score(self) -> float | None:
        """The held-out test accuracy, else (unlabelled table) the test fidelity; None when not measured."""
        test = self.held_out[1]
        return None if test is None else test["value"]

    def to_dict(self) -> dict[str, Any]:
        """The YAML document, validated and in file order (format, config, target, results, provenance)."""
        config = {name: _plain(value) for name, value in self.config.to_dict().items()}
        document = {
            "format": FORMAT,
            "config": config,
            "target": self.target,
            "results": self.results,
            "provenance": self.provenance,
        }
        checked = Preset.from_dict(document)
        return {
            "format": FORMAT,
            "config": config,
            "target": checked.target,
            "results": checked.results,
            "provenance": checked.provenance,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "preset", path: str | None = None) -> Preset:
        """Validate a preset document (as read by `yaml.safe_load`); raise ConfigError naming the bad field."""
        mapping = validation.mapping(where, data)
        _check_format(f"{where}.format", mapping)
        validation.known_keys(where, mapping, _TOP_KEYS, required=("format", "config", "target"))
        return cls(
            config=AdaTPConfig.from_dict(mapping["config"], where=f"{where}.config"),
            target=_target(f"{where}.target", mapping["target"]),
            results=_results(f"{where}.results", _or_empty(mapping.get("results"))),
            provenance=_provenance(f"{where}.provenance", _or_empty(mapping.get("provenance"))),
            path=path,
        )


def load_preset(path: str | os.PathLike[str]) -> Preset:
    """Read and validate a preset file; any problem raises one ConfigError line naming the field and the file."""
    path = Path(path)
    try:
        text = safe_yaml.read(path)
    except FileNotFoundError:
        raise ConfigError(f"preset: no such file {path}") from None
    except OSError as error:
        raise ConfigError(f"preset: cannot read {path}: {error.strerror or type(error).__name__}") from None
    except safe_yaml.UnsafeYAML as error:
        raise ConfigError(f"preset: {path}: {error}") from None
    try:
        data = safe_yaml.load(text)
    except safe_yaml.UnsafeYAML as error:
        raise ConfigError(f"preset: {path}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"preset: malformed YAML in {path}{at}: {problem}") from None
    if data is None:
        raise ConfigError(f"preset: {path} is empty")
    try:
        return Preset.from_dict(data, path=str(path))
    except ConfigError as error:
        raise ConfigError(f"{error} (in {path})") from None


def save_preset(preset: Preset, path: str | os.PathLike[str]) -> Path:
    """Validate and write `preset` as YAML that `load_preset` reads back equal. Atomic; creates parent dirs."""
    document = preset.to_dict()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(document, Dumper=_PresetDumper, sort_keys=False, allow_unicode=True)
    # The temporary name does not end in .yaml, so select_preset never reads a half-written file.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; a preset is meant to be shared
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return path


def select_preset(directory: str | os.PathLike[str], dataset: str, budget: float) -> Preset:
    """The best preset in `directory` (its `*.yaml` files) for `dataset` that fits a FLOPs `budget` in (0, 1].

    A preset fits when its achieved `results.flops_ratio` (else its `target.flops_budget`) is <= budget. Among
    those, the highest test accuracy (for unlabelled data: test fidelity) wins (presets without one rank last); ties
    go to the lower FLOPs ratio,
    then to the file name. Unreadable presets are skipped; if none fits, ConfigError says what exists.
    """
    validation.number("select_preset.budget", budget, 0.0, 1.0, low_open=True)
    folder = Path(directory)
    if not folder.is_dir():
        raise ConfigError(f"select_preset.directory: no such directory {folder}")
    fitting: list[Preset] = []
    dataset_costs: list[float] = []
    skipped: list[str] = []
    for file in sorted(folder.glob("*.yaml")):
        try:
            preset = load_preset(file)
        except ConfigError:
            skipped.append(file.name)
            continue
        if preset.target["dataset"] != dataset:
            continue
        dataset_costs.append(preset.flops_ratio)
        if preset.flops_ratio <= budget + _BUDGET_SLACK:
            fitting.append(preset)
    if fitting:
        return max(fitting, key=lambda p: (p.test_score is not None, p.test_score or 0.0, -p.flops_ratio))
    found = (
        f"its presets cost {', '.join(f'{cost:g}' for cost in sorted(dataset_costs))}"
        if dataset_costs
        else "there is no preset for it"
    )
    unreadable = f"; skipped {len(skipped)} unreadable: {', '.join(skipped)}" if skipped else ""
    raise ConfigError(
        f"select_preset: no preset in {folder} for dataset {brief(dataset)} within flops budget {budget:g} "
        f"({found}{unreadable})"
    )


class _PresetDumper(yaml.SafeDumper):
    """Safe YAML with lists in flow style (`ci95: [0.57, 0.65]`) and everything else in block style."""


_PresetDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _plain(value: Any) -> Any:
    """Number subclasses (numpy.float64, ...) as plain float/int: safe YAML writes only exact built-in types."""
    if isinstance(value, float):
        return float(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    return value


def held_out_view(results: dict[str, Any]) -> tuple[str, Any, Any, Any]:
    """(what was measured, test, default, vanilla) of a preset's `results`: "accuracy" with those three, or for an
    unlabelled table "fidelity" (agreement with the unpruned model; vanilla is then None: it agrees with itself)."""
    if results.get("test_accuracy") is None and results.get("test_fidelity") is not None:
        return "fidelity", results["test_fidelity"], results.get("default_fidelity"), None
    return "accuracy", results.get("test_accuracy"), results.get("default_accuracy"), results.get("vanilla_accuracy")


def _or_empty(value: Any) -> Any:
    """An optional section written as `results:` (null) means empty; anything else is validated as given."""
    return {} if value is None else value


def _check_format(where: str, data: dict[Any, Any]) -> None:
    """Checked before anything else: a newer file may have keys this version does not know."""
    if "format" not in data:
        raise ConfigError(f"{where}: missing (required: {FORMAT})")
    value = data["format"]
    match = _FORMAT_PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match is not None and int(match[1]) > _FORMAT_VERSION:
        raise ConfigError(f"{where}: {value} is newer than this adatp understands ({FORMAT}); upgrade adatp")
    if match is None or int(match[1]) != _FORMAT_VERSION:
        raise ConfigError(f"{where}: must be {FORMAT}, got {brief(value)}")


def _target(where: str, data: Any) -> dict[str, Any]:
    data = validation.mapping(where, data)
    validation.known_keys(where, data, _TARGET_KEYS, required=_TARGET_KEYS)
    return {
        "model": validation.text(f"{where}.model", data["model"]),
        "dataset": validation.text(f"{where}.dataset", data["dataset"]),
        "frames": validation.integer(f"{where}.frames", data["frames"], 1),
        "flops_budget": validation.number(f"{where}.flops_budget", data["flops_budget"], 0.0, 1.0, low_open=True),
    }


def _accuracy(where: str, data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    data = validation.mapping(where, data)
    validation.known_keys(where, data, _ACCURACY_FIELDS, required=("value", "n"))
    accuracy: dict[str, Any] = {
        "value": validation.number(f"{where}.value", data["value"], 0.0, 1.0),
        "n": validation.integer(f"{where}.n", data["n"], 0),
    }
    if data.get("ci95") is not None:
        ci95 = data["ci95"]
        if not isinstance(ci95, list | tuple) or len(ci95) != 2:
            raise ConfigError(f"{where}.ci95: must be a list [lo, hi], got {brief(ci95)}")
        lo = validation.number(f"{where}.ci95[0]", ci95[0], 0.0, 1.0)
        hi = validation.number(f"{where}.ci95[1]", ci95[1], 0.0, 1.0)
        if lo > hi:
            raise ConfigError(f"{where}.ci95: lo must be <= hi, got {brief(list(ci95))}")
        accuracy["ci95"] = [lo, hi]
    if data.get("macro") is not None:
        accuracy["macro"] = validation.number(f"{where}.macro", data["macro"], 0.0, 1.0)
    if data.get("macro_missing") is not None:
        missing = data["macro_missing"]
        if not isinstance(missing, list) or not all(isinstance(name, str) for name in missing):
            raise ConfigError(f"{where}.macro_missing: must be a list of task type names, got {brief(missing)}")
        accuracy["macro_missing"] = list(missing)
    return accuracy


def _paired(where: str, data: Any) -> dict[str, Any]:
    """Free-form names, each a finite number or a list of them (e.g. a paired difference and its CI)."""
    paired = {}
    for name, value in validation.mapping(where, data).items():
        field = f"{where}.{name}"
        if not isinstance(name, str):
            raise ConfigError(f"{field}: key must be a string, got {type(name).__name__}")
        if isinstance(value, list | tuple):
            paired[name] = [validation.number(f"{field}[{i}]", item) for i, item in enumerate(value)]
        else:
            paired[name] = validation.number(field, value)
    return paired


def _results(where: str, data: Any) -> dict[str, Any]:
    data = validation.mapping(where, data)
    validation.known_keys(where, data, _RESULT_KEYS)
    results: dict[str, Any] = {}
    if "flops_ratio" in data:
        ratio = data["flops_ratio"]
        results["flops_ratio"] = (None if ratio is None else
                                  validation.number(f"{where}.flops_ratio", ratio, 0.0, 1.0, low_open=True))
    for key in _ACCURACY_KEYS:
        if key in data:
            results[key] = _accuracy(f"{where}.{key}", data[key])
    if "paired" in data:
        results["paired"] = _paired(f"{where}.paired", _or_empty(data["paired"]))
    if data.get("scoring") is not None:
        results["scoring"] = _scoring(f"{where}.scoring", data["scoring"])
    return results


def _scoring(where: str, data: Any) -> dict[str, str]:
    data = validation.mapping(where, data)
    validation.known_keys(where, data, tuple(SCORING))
    return {key: validation.choice(f"{where}.{key}", data[key], SCORING[key]) for key in SCORING if key in data}


def _versions(where: str, data: Any) -> dict[str, str]:
    """Free-form package -> version. YAML reads `numpy: 2` as a number: versions are kept as strings."""
    versions = {}
    for name, value in validation.mapping(where, data).items():
        if not isinstance(name, str):
            raise ConfigError(f"{where}.{name}: key must be a string, got {type(name).__name__}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ConfigError(f"{where}.{name}: must be a version string, got {type(value).__name__} {brief(value)}")
        versions[name] = str(value)
    return versions


def _created(where: str, value: Any) -> str:
    # An unquoted ISO time in YAML loads as a datetime (or date); keep the text form either way.
    if isinstance(value, datetime.date):
        return value.isoformat()
    text = validation.text(where, value)
    try:
        datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"{where}: must be an ISO 8601 time like 2025-06-01T12:00:00+00:00, "
                          f"got {brief(value)}") from None
    return text


def _provenance(where: str, data: Any) -> dict[str, Any]:
    data = validation.mapping(where, data)
    validation.known_keys(where, data, _PROVENANCE_KEYS)
    provenance: dict[str, Any] = {}
    for key in _PROVENANCE_KEYS:
        if key not in data:
            continue
        value, field = data[key], f"{where}.{key}"
        if value is None:
            provenance[key] = None
        elif key in ("study", "mlflow_run_id"):
            provenance[key] = validation.text(field, value)
        elif key == "trial":
            provenance[key] = validation.integer(field, value, 0)
        elif key == "versions":
            provenance[key] = _versions(field, value)
        else:
            provenance[key] = _created(field, value)
    return provenance
