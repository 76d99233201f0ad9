"""Study specs: one YAML file per tuning study, validated in full before anything heavy starts.

    from autotune.spec import load_spec
    spec = load_spec("studies/demo.yaml", overrides=["n_trials=5", "dataset.limit=40"])
    spec.study_name(0.3)                      # 'demo-synthetic-b0.30'
    spec.config_for(0.41, {"tau_s": 0.85})    # AdaTPConfig with the base's fixed fields

Every problem raises `SpecError` with one line that starts with the field's dotted path, e.g.
`budgets[1]: must be in (0, 1], got 1.5` or `dataset.root: /data/mlvu does not exist`.

String values may use `${VAR}` and `${VAR:-default}`. Relative paths (and `sqlite:///relative.db` URLs)
resolve against the current working directory at load time.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from adatp import safe_yaml, validation
from adatp.config import THRESHOLD_RANGES, AdaTPConfig, ConfigError
from adatp.validation import RefusalError, brief
from autotune.data.benchmarks import BENCHMARKS
from autotune.data.protocol import EXTRACTIONS
from autotune.data.scoring import OPEN_METRICS
from autotune.data.table import ANSWER_FORMATS, CANONICAL, MISSING_VIDEO, SOURCES, SUFFIX_SOURCES

PATH_CHARS = 200  # a path in a message is shown whole up to this, so the user finds the file
PATH_MAX, NAME_MAX = 4096, 255  # bytes: the longest path and file name Linux filesystems hold


class SpecError(RefusalError):
    """A bad study spec or override. The message is one line starting with the field's path; a long value quoted in
    it is cut in the middle, so the line stays readable (its start and its `(in file)` end are kept)."""

    LIMIT = 300

    def __init__(self, message: str) -> None:
        message = " ".join(str(message).splitlines())
        if len(message) > self.LIMIT:
            message = f"{message[:200]} ...[{len(message) - 280:,} characters cut]... {message[-80:]}"
        super().__init__(message)


THRESHOLDS = tuple(THRESHOLD_RANGES)  # tau_s, tau_t, alpha_boost, gamma_cap
# Searched ranges when a spec has no `space:`; each contains AdaTPConfig's default for that threshold.
DEFAULT_SPACE = {"tau_s": (0.7, 1.0), "tau_t": (0.0, 1.0), "alpha_boost": (1.0, 4.0), "gamma_cap": (0.1, 1.0)}

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
# auto: accuracy when the table has answers, else fidelity; logits for multiple-choice, generate for open-ended.
OBJECTIVES = ("auto", "accuracy", "fidelity")
MODES = ("auto", "logits", "generate")
METRICS = ("auto", "letter", *OPEN_METRICS)  # letter: multiple-choice answers, the only metric there
SAMPLERS = ("tpe", "random", "nsga2", "gp")
PRUNERS = ("successive_halving", "hyperband", "median", "none")

_SLUG = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")
_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# Top-level spec keys, in the order a spec file usually lists them.
_TOP_KEYS = tuple(
    "name model dataset budgets objective mode protocol metric max_new_tokens base space warm_start sampler pruner "
    "n_trials batch_size "
    "storage "
    "tracking_uri artifact_location presets_dir cache_dir workdir heartbeat".split()
)
_SQL_URL = re.compile(r"(sqlite:///|journal:///|(postgresql|mysql)(\+\w+)?://).+")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The model to tune on.

    path: local `save_pretrained` directory (absolute after loading; must hold config.json) or a hub id
        "org/name" that is already in the local Hugging Face cache (nothing is downloaded).
    dtype: float32 | bfloat16 | float16.
    device: cpu | cuda | cuda:N | mps.
    attn_implementation: sdpa | eager | flash_attention_2.
    trust_remote_code: passed to `from_pretrained`; off unless the spec asks.
    cuda_graphs: on CUDA, replay AdaTP's token selection from CUDA graphs (`adatp.enable(..., cuda_graphs=True)`):
        the same tokens from one graph launch instead of many small kernels. Off by default: in batched trials it
        saved nothing measurable (docs/performance.md, bench/results/trial_cost_*.json), and each trial config
        costs one capture.
    frame_size: [height, width] in pixels every frame is resized to before a Qwen-VL processor's own resizing,
        so all videos of a study share one grid (one visual token count, one retention per budget). None: the
        engine's default for the family (Qwen: 360 x 640, a 16:9 frame). LLaVA-OneVision resizes to its vision
        tower's square input and takes no frame_size.
    prefix_cache: run trials from a per-video prefix cache when the config allows it (`score: attention` at
        `prune_layer` >= 1): layers < K over system prompt + video once per video, not once per trial and
        question (`adatp.prefix`; same answers). On by default.
    """

    path: str
    dtype: str = "float32"
    device: str = "cpu"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    cuda_graphs: bool = False
    frame_size: tuple[int, int] | None = None
    prefix_cache: bool = True


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """The video-QA table and its tune/test split (`autotune.data.table` reads it through HF `datasets`).

    name: the dataset's name in study and preset names (a slug; default: the preset, else the file's stem).
    root: where the table is (spec key `path`, or `root` as older specs say): a file, a glob or a directory
        (absolute after loading), or with `source: hub` a hub id read from the local Hugging Face cache.
    preset: a benchmark layout (videomme, mlvu, longvideobench, synthetic: `autotune.data.benchmarks`), or None
        for your own table. source: json | csv | parquet | disk | hub | videofolder (default: from the file suffix;
        a directory with a dataset_info.json is `disk`). split: which split (default: the only one).
    video_root: where relative video paths are found (default: the table's directory).
    columns: canonical name (id, video, video_id, question, options, answer) -> the table's column; `options` may be
        a list of columns. answer_format: auto | letter | index | text. where: {column: value or [values]}.
    subset: {n: >= 1, stratify: column or null, seed: >= 0}: a seeded, stratified sample of the questions.
    missing_video: error (the study refuses to start while a video is missing) | skip (skipped and counted).
    frames: frames per video, >= 1; None uses the model's saved num_frames.
    test_fraction: share of videos held out for the test split, in (0, 1).
    split_seed: seed of the split by video, >= 0.
    limit: at most this many questions (>= 1); None reads all.
    synthetic: generator parameters {n_videos: >= 1, seed: >= 0, questions_per_video: >= 1}, for the synthetic
        preset and tables over its files; when given, a missing set is generated rather than an error.
    """

    name: str
    root: str
    preset: str | None = None
    source: str | None = None
    split: str | None = None
    video_root: str | None = None
    columns: dict = dataclasses.field(default_factory=dict)
    answer_format: str = "auto"
    where: dict = dataclasses.field(default_factory=dict)
    subset: dict | None = None
    missing_video: str = "error"
    frames: int | None = None
    test_fraction: float = 0.5
    split_seed: int = 0
    limit: int | None = None
    synthetic: dict | None = None

    def table(self):
        """The `autotune.data.table.TableSpec` this section reads (a preset's layout is picked from the files)."""
        from autotune.data.benchmarks import preset_table
        from autotune.data.table import TableSpec

        common = dict(split=self.split, video_root=self.video_root, where=self.where, limit=self.limit,
                      subset=self.subset, missing_video=self.missing_video)
        if self.preset is not None:
            overrides = {**common, "dataset_name": self.name}
            if self.columns:
                overrides["columns"] = self.columns
            if self.answer_format != "auto":
                overrides["answer_format"] = self.answer_format
            return preset_table(self.preset, self.root, source=self.source, **overrides)
        return TableSpec(name=self.name, source=self.source or "json", path=self.root, columns=self.columns,
                         answer_format=self.answer_format, **common)


@dataclasses.dataclass(frozen=True)
class SamplerSpec:
    """Optuna sampler. name: tpe | random | nsga2 | gp; seed >= 0; n_startup_trials >= 0 (tpe and gp)."""

    name: str = "tpe"
    seed: int = 0
    n_startup_trials: int = 8


@dataclasses.dataclass(frozen=True)
class PrunerSpec:
    """Optuna pruner over nested question rungs.

    name: successive_halving | hyperband | median | none.
    rungs: >= 1; a trial reports after 1/2^(rungs-1), ..., 1/2 and all of the tune split's questions.
    reduction_factor: >= 2 (successive_halving, hyperband).
    n_startup_trials: >= 0 (median).
    """

    name: str = "successive_halving"
    rungs: int = 4
    reduction_factor: int = 2
    n_startup_trials: int = 4


@dataclasses.dataclass(frozen=True)
class HeartbeatSpec:
    """Optuna storage heartbeats: a worker beats every `interval` s; a RUNNING trial silent for `grace` s is failed
    by the next worker that starts a trial, and re-run once. The beat runs in a thread, so long GPU trials need no
    longer interval; `grace` (> interval) absorbs database or network stalls. A worker rides out a database outage
    of up to `outage` s (its calls and its heartbeat retried with backoff), then exits 2 in one line and its trial
    is re-run by the next worker (see `autotune.storage`)."""

    interval: int = 60      # seconds, >= 1
    grace: int = 600        # seconds, > interval
    outage: int = 300       # seconds, >= 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudySpec:
    """A validated study spec: one Optuna study per budget, all tracked in one MLflow experiment.

    name: slug [a-z0-9][a-z0-9_.-]*, used in study names and as the MLflow experiment.
    budgets: FLOPs ratios (pruned prefill / unpruned prefill), each in (0, 1], sorted ascending, unique.
    objective: `accuracy` (against the table's answers), `fidelity` (agreement with the unpruned model), or `auto`
        (the default): accuracy when the table has an answer column, else fidelity (`resolve_answers` says so).
    mode: how an answer is read: `logits` (the option letters' next-token logits after the prompt: one prefill, no
        decoding), `generate` (up to `max_new_tokens` greedy tokens; a letter extracted from the text as lmms-eval
        does, or for open-ended questions the text itself), or `auto` (the default): logits for multiple-choice
        tables, generate for open-ended ones.
    metric: how an open-ended answer is scored against the gold or the unpruned model's answer: exact_match, token_f1,
        relative_accuracy (numbers), or `auto`: relative_accuracy when every gold answer is a number, else token_f1.
        Multiple-choice answers are scored by their letter (`letter`). max_new_tokens: generate mode's budget, >= 1.
    protocol: the extraction in generate mode: `lmms-eval-0.7` (lmms-eval 0.7.3's rules exactly, LongVideoBench's
        random fallback seeded per question) or `strict` (ours: never a letter inside a word; None when unsure).
    base: fixed values of everything not searched, and the default thresholds (the warm-start point);
        its retention is unused (each budget sets its own).
    space: searched threshold -> (low, high), low < high, inside AdaTPConfig's valid range.
    warm_start: extra threshold points enqueued once per study, inside the space.
    n_trials: trials per budget, >= 1.  batch_size: questions per forward batch, >= 1.
    storage: Optuna storage URL (SQLAlchemy); tracking_uri: MLflow tracking URI.
    artifact_location, presets_dir, cache_dir, workdir: absolute paths.
    source: the spec file it was loaded from, None when built from a dict.
    """

    name: str
    model: ModelSpec
    dataset: DatasetSpec
    budgets: tuple[float, ...]
    objective: str = "auto"
    mode: str = "auto"
    protocol: str = "lmms-eval-0.7"
    metric: str = "auto"
    max_new_tokens: int = 16
    base: AdaTPConfig = dataclasses.field(default_factory=AdaTPConfig)
    space: dict[str, tuple[float, float]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_SPACE))
    warm_start: tuple[dict[str, float], ...] = ()
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    n_trials: int = 30
    batch_size: int = 8
    storage: str
    tracking_uri: str
    artifact_location: str
    presets_dir: str
    cache_dir: str
    workdir: str
    heartbeat: HeartbeatSpec = HeartbeatSpec()
    source: str | None = None

    def study_name(self, budget: float) -> str:
        """Optuna study name for one budget, e.g. 'demo-synthetic-b0.30'."""
        return f"{self.name}-{self.dataset.name}-b{budget:.2f}"

    def config_for(self, retention: float, params: Mapping[str, float] | None = None) -> AdaTPConfig:
        """The base config with `retention` and the thresholds in `params` (absent ones keep base values)."""
        params = dict(params or {})
        for key in params:
            if key not in THRESHOLDS:
                raise SpecError(f"params.{key}: not a threshold (thresholds: {', '.join(THRESHOLDS)})")
        return self.base.replace(retention=retention, **params)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict of the resolved spec, with passwords in URLs masked.

        Without `source`, and without `base.retention` (unused), so that it loads back with `spec_from_dict`.
        """
        base = self.base.to_dict()
        del base["retention"]
        return {
            "name": self.name,
            "model": {**dataclasses.asdict(self.model),
                      "frame_size": list(self.model.frame_size) if self.model.frame_size else None},
            "dataset": dataclasses.asdict(self.dataset),
            "budgets": list(self.budgets),
            "objective": self.objective,
            "mode": self.mode,
            "protocol": self.protocol,
            "metric": self.metric,
            "max_new_tokens": self.max_new_tokens,
            "base": base,
            "space": {key: list(bounds) for key, bounds in self.space.items()},
            "warm_start": [dict(point) for point in self.warm_start],
            "sampler": dataclasses.asdict(self.sampler),
            "pruner": dataclasses.asdict(self.pruner),
            "n_trials": self.n_trials,
            "batch_size": self.batch_size,
            "storage": mask_url(self.storage),
            "tracking_uri": mask_url(self.tracking_uri),
            "artifact_location": self.artifact_location,
            "presets_dir": self.presets_dir,
            "cache_dir": self.cache_dir,
            "workdir": self.workdir,
            "heartbeat": dataclasses.asdict(self.heartbeat),
        }


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***`: 'postgresql://u:secret@h/db' -> 'postgresql://u:***@h/db'.

    Also masks `password=` / `passwd=` / `pwd=` query parameters. URLs without a password come back unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(ch) for ch in "/?#") if i != -1), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostport}"
    tail = re.sub(r"([?&](?:password|passwd|pwd)=)[^&#]*", r"\1***", tail, flags=re.IGNORECASE)
    return f"{scheme}://{netloc}{tail}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """'dataset.limit=40' -> (['dataset', 'limit'], 40); the value is parsed as YAML ('[0.3, 0.5]' is a list)."""
    key, sep, raw = text.partition("=")
    keys = key.strip().split(".")
    if not sep or not key.strip() or any(not part for part in keys):
        raise SpecError(f"override {brief(text)}: expected key=value")
    try:
        value = safe_yaml.load(raw)
    except safe_yaml.UnsafeYAML as error:
        raise SpecError(f"override {brief(text)}: {error}") from None
    except yaml.YAMLError as error:
        reason = str(error).splitlines()[0]
        raise SpecError(f"override {brief(text)}: cannot parse the value as YAML ({reason})") from None
    return keys, value


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> StudySpec:
    """Read, override and validate the spec file at `path`; SpecError on any problem."""
    for text in overrides:
        parse_override(text)  # syntax errors first, so they are not blamed on the file
    source = os.path.abspath(os.fspath(path))
    where = os.path.basename(source)
    try:
        data = safe_yaml.load(safe_yaml.read(source))
    except FileNotFoundError:
        raise SpecError(f"{os.fspath(path)}: no such spec file") from None
    except IsADirectoryError:
        raise SpecError(f"{os.fspath(path)}: is a directory, not a spec file") from None
    except PermissionError:
        raise SpecError(f"{os.fspath(path)}: permission denied") from None
    except OSError as error:
        raise SpecError(f"{os.fspath(path)}: cannot read ({error.strerror or type(error).__name__})") from None
    except safe_yaml.UnsafeYAML as error:
        raise SpecError(f"{where}: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise SpecError(f"{where}: not valid YAML{line}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SpecError(f"{where}: must be a YAML mapping of spec fields, got {type(data).__name__}")
    try:
        return spec_from_dict(data, overrides, source=source)
    except SpecError as error:
        raise SpecError(f"{error} (in {where})") from None


def spec_from_dict(
    data: Mapping, overrides: Sequence[str] = (), source: str | None = None, check_paths: bool = True
) -> StudySpec:
    """Validate a spec mapping (after applying `overrides`) into a StudySpec; SpecError on any problem.

    check_paths=False skips the filesystem checks of model.path, dataset.root and base.siglip_path.
    """
    if not isinstance(data, Mapping):
        raise SpecError(f"spec: must be a mapping, got {type(data).__name__}")
    raw = _plain(data)
    for text in overrides:
        _apply_override(raw, text)
    raw = _expand_env(raw, "")
    return _build(raw, source, check_paths)


# --- raw mapping helpers ---------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Deep copy with every Mapping turned into a dict and every tuple into a list."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return copy.deepcopy(value)


def _apply_override(raw: dict, text: str) -> None:
    keys, value = parse_override(text)
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if child is None:  # e.g. `dataset.synthetic.n_videos=10` onto `synthetic: null`
            child = node[key] = {}
        if not isinstance(child, dict):
            path = ".".join(keys[: depth + 1])
            raise SpecError(f"override {brief(text)}: {path} is not a mapping (it holds {brief(child)})")
        node = child
    node[keys[-1]] = value
    if keys[:-1] == ["dataset"] and keys[-1] in ("path", "root"):  # the two names of one field: the override wins
        node.pop("root" if keys[-1] == "path" else "path", None)


def _expand_env(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        return {key: _expand_env(item, _join(where, key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_expand_env(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        current = os.environ.get(name)
        if current:
            return current
        if default is not None:  # like the shell's ${VAR:-default}: also used when VAR is empty
            return default
        if current is not None:
            return current
        raise SpecError(f"{where or 'spec'}: environment variable {name} is not set")

    return _ENV_VAR.sub(substitute, value)


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _section(raw: dict, key: str, allowed: Sequence[str]) -> dict:
    """The mapping at raw[key] ({} when absent or null), with unknown keys rejected."""
    value = raw.get(key)
    if value is None:
        return {}
    _known_keys(_mapping(key, value), key, allowed)
    return value


def _known_keys(mapping: dict, where: str, allowed: Sequence[str]) -> None:
    validation.known_keys(where, mapping, allowed, error=SpecError)


# --- value checks: adatp's validation kit, raising SpecError ------------------------------------------------------

_number = functools.partial(validation.number, error=SpecError)
_integer = functools.partial(validation.integer, error=SpecError)
_string = functools.partial(validation.text, error=SpecError)
_choice = functools.partial(validation.choice, error=SpecError)
_mapping = functools.partial(validation.mapping, error=SpecError)


def _optional_integer(where: str, value: Any, minimum: int) -> int | None:
    return None if value is None else _integer(where, value, minimum)


def _required(raw: dict, key: str, where: str) -> Any:
    if raw.get(key) is None:
        raise SpecError(f"{_join(where, key)}: required")
    return raw[key]


def _abspath(path: str, field: str) -> str:
    """`path` made absolute; a path no filesystem holds (over PATH_MAX bytes, or a name over NAME_MAX) is refused
    here, in one line naming `field`, not by an OSError at first use."""
    absolute = os.path.abspath(os.path.expanduser(path))
    encoded = os.fsencode(absolute)
    size, longest = len(encoded), max(map(len, encoded.split(b"/")))
    if size > PATH_MAX or longest > NAME_MAX:
        what = f"{size:,} bytes long, at most {PATH_MAX:,}" if size > PATH_MAX else \
            f"a name in it is {longest:,} bytes long, at most {NAME_MAX}"
        raise SpecError(f"{field}: not a possible path ({what}): {brief(path, PATH_CHARS)}")
    return absolute


def _path_or_uri(value: str, field: str) -> str:
    """An artifact URI (mlflow-artifacts:/x, s3://b/x, file:///x) as is; a local path made absolute."""
    return value if re.match(r"[a-z][a-z0-9+.-]+:/", value) else _abspath(value, field)


def _resolve_sqlite(url: str, field: str) -> str:
    """'sqlite:///rel.db' -> 'sqlite:////<cwd>/rel.db'; absolute and in-memory URLs unchanged."""
    path = url[len("sqlite:///") :]
    if path.startswith(":memory:") or not path:
        return url
    file, sep, query = path.partition("?")
    absolute = _abspath(file, field)
    return url if file.startswith("/") else f"sqlite:///{absolute}{sep}{query}"


# --- sections --------------------------------------------------------------------------------------------------


def _build(raw: dict, source: str | None, check_paths: bool) -> StudySpec:
    _known_keys(raw, "", _TOP_KEYS)

    name = _string("name", _required(raw, "name", ""))
    if not _SLUG.fullmatch(name):
        raise SpecError(f"name: must match [a-z0-9][a-z0-9_.-]* (lowercase slug), got {brief(name)}")

    model = _model(raw, check_paths)
    dataset = _dataset(raw, check_paths)
    budgets = _budgets(raw)
    objective = _choice("objective", raw.get("objective", "auto"), OBJECTIVES)
    mode = _choice("mode", raw.get("mode", "auto"), MODES)
    metric = _choice("metric", raw.get("metric", "auto"), METRICS)
    max_new_tokens = _integer("max_new_tokens", raw.get("max_new_tokens", 16), 1, 4096)
    protocol = _choice("protocol", raw.get("protocol", "lmms-eval-0.7"), EXTRACTIONS)
    base = _base(raw, budgets, check_paths)
    space = _space(raw, base)
    warm_start = _warm_start(raw, space)
    sampler = _sampler(raw)
    pruner = _pruner(raw)
    n_trials = _integer("n_trials", raw.get("n_trials", 30), 1)
    batch_size = _integer("batch_size", raw.get("batch_size", 8), 1)

    workdir = _abspath(_string("workdir", raw.get("workdir", os.path.join(".autotune", name))), "workdir")
    storage = _storage(raw.get("storage", f"sqlite:///{workdir}/optuna.db"))
    tracking_uri = _tracking_uri(raw.get("tracking_uri", f"sqlite:///{workdir}/mlflow.db"))
    paths = {
        key: _path_or_uri(_string(key, raw.get(key, default)), key)
        for key, default in (
            ("artifact_location", os.path.join(workdir, "mlartifacts")),
            ("presets_dir", "presets"),
            ("cache_dir", os.path.join(workdir, "cache")),
        )
    }
    return StudySpec(
        name=name,
        model=model,
        dataset=dataset,
        budgets=budgets,
        objective=objective,
        mode=mode,
        protocol=protocol,
        metric=metric,
        max_new_tokens=max_new_tokens,
        base=base,
        space=space,
        warm_start=warm_start,
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        batch_size=batch_size,
        storage=storage,
        tracking_uri=tracking_uri,
        workdir=workdir,
        heartbeat=_heartbeat(raw),
        source=source,
        **paths,
    )


def _model(raw: dict, check_paths: bool) -> ModelSpec:
    if raw.get("model") is None:
        raise SpecError("model.path: required")
    section = _section(raw, "model", [field.name for field in dataclasses.fields(ModelSpec)])
    path = _string("model.path", _required(section, "path", "model"))
    is_hub_id = bool(_HUB_ID.fullmatch(path)) and not os.path.isdir(path)
    if not is_hub_id:
        path = _abspath(path, "model.path")
    if check_paths:
        if is_hub_id:
            if not _in_hub_cache(path):
                raise SpecError(f"model.path: {path} is not a local directory and not in the Hugging Face cache")
        elif not os.path.isdir(path):
            raise SpecError(f"model.path: {path} is not a local directory")
        elif not os.path.isfile(os.path.join(path, "config.json")):
            raise SpecError(f"model.path: {path} has no config.json (not a saved model directory)")
    trust, graphs = section.get("trust_remote_code", False), section.get("cuda_graphs", False)
    prefix_cache = section.get("prefix_cache", True)
    for key, value in (("trust_remote_code", trust), ("cuda_graphs", graphs), ("prefix_cache", prefix_cache)):
        if not isinstance(value, bool):
            raise SpecError(f"model.{key}: must be true or false, got {brief(value)}")
    device = section.get("device", "cpu")
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise SpecError(f"model.device: must be cpu, cuda, cuda:N or mps, got {brief(device)}")
    return ModelSpec(
        path=path,
        dtype=_choice("model.dtype", section.get("dtype", "float32"), DTYPES),
        device=device,
        attn_implementation=_choice(
            "model.attn_implementation", section.get("attn_implementation", "sdpa"), ATTN_IMPLEMENTATIONS
        ),
        trust_remote_code=trust,
        cuda_graphs=graphs,
        frame_size=_frame_size(section.get("frame_size")),
        prefix_cache=prefix_cache,
    )


def _frame_size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(side, int) and not isinstance(side, bool) and 28 <= side <= 4096 for side in value)):
        raise SpecError(f"model.frame_size: must be [height, width], two integers in [28, 4096], got {brief(value)}")
    return value[0], value[1]


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub model's config.json is in the local Hugging Face cache (never downloads)."""
    import huggingface_hub

    try:
        found = huggingface_hub.try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # HFValidationError: not a valid repo id
        return False
    return isinstance(found, str)


_DATASET_KEYS = ("name", "preset", "source", "path", "root", "split", "video_root", "columns", "answer_format",
                 "where", "subset", "missing_video", "frames", "test_fraction", "split_seed", "limit", "synthetic")


def _dataset(raw: dict, check_paths: bool) -> DatasetSpec:
    if raw.get("dataset") is None:
        raise SpecError("dataset.path: required (the table to tune on)")
    section = _section(raw, "dataset", _DATASET_KEYS)
    preset = _dataset_preset(section)
    source = None if section.get("source") is None else _choice("dataset.source", section["source"], SOURCES)
    root = _dataset_path(section, source)
    name = _dataset_name(section, preset, root)
    synthetic = _synthetic(section.get("synthetic"), preset, section.get("path", section.get("root")))
    if preset is None and source is None:
        source = _source_from_path(root)
    if check_paths and synthetic is None and source != "hub" and not _glob_matches(root):
        key = "root" if section.get("root") is not None else "path"
        raise SpecError(f"dataset.{key}: {root} does not exist"
                        + (" (or give dataset.synthetic parameters to generate it)" if preset == "synthetic" else ""))
    return DatasetSpec(
        name=name, root=root, preset=preset, source=source,
        split=None if section.get("split") is None else _string("dataset.split", section["split"]),
        video_root=None if section.get("video_root") is None else _abspath(
            _string("dataset.video_root", section["video_root"]), "dataset.video_root"),
        columns=_columns(section.get("columns")),
        answer_format=_choice("dataset.answer_format", section.get("answer_format", "auto"), ANSWER_FORMATS),
        where=_where(section.get("where")),
        subset=_subset(section.get("subset")),
        missing_video=_choice("dataset.missing_video", section.get("missing_video", "error"), MISSING_VIDEO),
        frames=_optional_integer("dataset.frames", section.get("frames"), 1),
        test_fraction=_number("dataset.test_fraction", section.get("test_fraction", 0.5), 0.0, 1.0, low_open=True,
                              high_open=True),
        split_seed=_integer("dataset.split_seed", section.get("split_seed", 0), 0),
        limit=_optional_integer("dataset.limit", section.get("limit"), 1),
        synthetic=synthetic,
    )


def _dataset_preset(section: dict) -> str | None:
    """`preset`, or (as older specs say) a `name` that is a benchmark's, when no `source` is given."""
    if section.get("preset") is not None:
        return _choice("dataset.preset", section["preset"], BENCHMARKS)
    name = section.get("name")
    if section.get("source") is None and isinstance(name, str) and name in BENCHMARKS:
        return name
    return None


def _dataset_path(section: dict, source: str | None) -> str:
    if section.get("path") is not None and section.get("root") is not None:
        raise SpecError("dataset.root: give path or root (the same thing), not both")
    key = "root" if section.get("root") is not None else "path"
    value = _string(f"dataset.{key}", _required(section, key, "dataset"))
    if source == "hub":
        if not _HUB_ID.fullmatch(value):
            raise SpecError(f"dataset.{key}: a hub dataset id is 'org/name', got {brief(value, PATH_CHARS)}")
        return value
    return _abspath(value, f"dataset.{key}")


def _dataset_name(section: dict, preset: str | None, root: str) -> str:
    name = section.get("name")
    if name is None:
        plain = root.split("*")[0].split("?")[0].split("[")[0]  # a glob names its folder: /x/clips/*.parquet -> clips
        plain = plain if plain == root else os.path.dirname(plain)
        stem = preset or os.path.splitext(os.path.basename(plain.rstrip("/")))[0] or "dataset"
        name = re.sub(r"[^a-z0-9_.-]+", "-", stem.lower()).strip("-.") or "dataset"
    name = _string("dataset.name", name)
    if not _SLUG.fullmatch(name):
        raise SpecError(f"dataset.name: must match [a-z0-9][a-z0-9_.-]* (lowercase slug), got {brief(name)}")
    return name


def _source_from_path(root: str) -> str:
    """json/csv/parquet from the suffix; a directory is a save_to_disk one (`disk`) if it has dataset_info.json or
    state.json (or a DatasetDict's dataset_dict.json), else a videofolder."""
    suffix = os.path.splitext(root)[1].lower()
    if suffix in SUFFIX_SOURCES:
        return SUFFIX_SOURCES[suffix]
    if os.path.isdir(root):
        markers = ("dataset_info.json", "state.json", "dataset_dict.json")
        return "disk" if any(os.path.isfile(os.path.join(root, m)) for m in markers) else "videofolder"
    raise SpecError(f"dataset.source: cannot tell the source of {brief(root, PATH_CHARS)} from its name; say source: "
                    f"{' | '.join(SOURCES)}")


def _glob_matches(root: str) -> bool:
    import glob as globbing

    return os.path.exists(root) or bool(globbing.glob(root, recursive=True))


def _columns(value: Any) -> dict:
    where = "dataset.columns"
    if value is None:
        return {}
    mapping = _mapping(where, value)
    _known_keys(mapping, where, CANONICAL)
    columns: dict[str, Any] = {}
    for canonical, column in mapping.items():
        field = f"{where}.{canonical}"
        if canonical == "options" and isinstance(column, list):
            if not column or not all(isinstance(name, str) and name for name in column):
                raise SpecError(f"{field}: a list of option columns must be non-empty column names, got "
                                f"{brief(column)}")
            columns[canonical] = list(column)
        else:
            columns[canonical] = _string(field, column)
    return columns


def _where(value: Any) -> dict:
    if value is None:
        return {}
    where = _mapping("dataset.where", value)
    for column, wanted in where.items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if not all(item is None or isinstance(item, (str, int, float, bool)) for item in allowed):
            raise SpecError(f"dataset.where.{column}: must be a value or a list of values, got {brief(wanted)}")
    return dict(where)


def _subset(value: Any) -> dict | None:
    where = "dataset.subset"
    if value is None:
        return None
    mapping = _mapping(where, value)
    _known_keys(mapping, where, ["n", "stratify", "seed"])
    stratify = mapping.get("stratify")
    return {"n": _integer(f"{where}.n", _required(mapping, "n", where), 1),
            "stratify": None if stratify is None else _string(f"{where}.stratify", stratify),
            "seed": _integer(f"{where}.seed", mapping.get("seed", 0), 0)}


def _synthetic(value: Any, preset: str | None, path: Any) -> dict | None:
    """Generator parameters: for the synthetic preset (path = the set's folder), or for a table over the set's own
    files (path = its questions.jsonl or open.jsonl)."""
    where = "dataset.synthetic"
    if value is None:
        return None
    own_file = isinstance(path, str) and os.path.basename(path) in ("questions.jsonl", "open.jsonl")
    if preset != "synthetic" and not own_file:
        raise SpecError(f"{where}: only for the synthetic preset or a table over its questions.jsonl / open.jsonl, "
                        f"not {preset or brief(str(path), PATH_CHARS)}")
    _known_keys(_mapping(where, value), where, ["n_videos", "seed", "questions_per_video"])
    from autotune.data.synthetic import KINDS  # numpy only; one question per pattern kind at most

    return {
        "n_videos": _integer(f"{where}.n_videos", _required(value, "n_videos", where), 1),
        "seed": _integer(f"{where}.seed", value.get("seed", 0), 0),
        "questions_per_video": _integer(
            f"{where}.questions_per_video", value.get("questions_per_video", 2), 1, len(KINDS)
        ),
    }


def _budgets(raw: dict) -> tuple[float, ...]:
    value = _required(raw, "budgets", "")
    if not isinstance(value, list) or not value:
        raise SpecError(f"budgets: must be a non-empty list of FLOPs ratios in (0, 1], got {brief(value)}")
    seen: dict[str, tuple[int, float]] = {}  # study-name label -> (index, budget)
    for index, item in enumerate(value):
        where = f"budgets[{index}]"
        budget = _number(where, item, 0.0, 1.0, low_open=True)
        label = f"{budget:.2f}"
        if label in seen:
            first, other = seen[label]
            if other == budget:
                raise SpecError(f"{where}: duplicate of budgets[{first}] ({brief(item)})")
            # Study names carry the budget to 2 decimals; two budgets must not share a study.
            raise SpecError(f"{where}: {brief(item)} and budgets[{first}] = {brief(other)} both round to {label}")
        seen[label] = (index, budget)
    return tuple(sorted(float(item) for item in value))


def _base(raw: dict, budgets: tuple[float, ...], check_paths: bool) -> AdaTPConfig:
    value = raw.get("base")
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise SpecError(f"base: must be a mapping of AdaTP settings, got {type(value).__name__} {brief(value)}")
    if "retention" in value:
        shown = ", ".join(f"{budget:g}" for budget in budgets)
        raise SpecError(f"base.retention: not allowed; retention comes from each budget (budgets: {shown})")
    value = dict(value)
    siglip_path = value.get("siglip_path")
    if isinstance(siglip_path, str) and siglip_path:
        value["siglip_path"] = _abspath(siglip_path, "base.siglip_path")
        if check_paths and not os.path.isdir(value["siglip_path"]):
            raise SpecError(f"base.siglip_path: {value['siglip_path']} is not a local directory")
    try:
        return AdaTPConfig.from_dict(value, where="base")
    except ConfigError as error:
        raise SpecError(str(error)) from None


def _space(raw: dict, base: AdaTPConfig) -> dict[str, tuple[float, float]]:
    value = raw.get("space")
    if value is None:
        value = DEFAULT_SPACE
    if not isinstance(value, Mapping):
        raise SpecError(f"space: must be a mapping of threshold -> [low, high], got {type(value).__name__}")
    if not value:
        raise SpecError(f"space: must search at least one threshold of {', '.join(THRESHOLDS)}")
    for key in value:
        if key not in THRESHOLDS:
            raise SpecError(f"space.{key}: unknown threshold (allowed: {', '.join(THRESHOLDS)})")
    space: dict[str, tuple[float, float]] = {}
    for key in (key for key in THRESHOLDS if key in value):  # canonical order
        where = f"space.{key}"
        bounds = value[key]
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise SpecError(f"{where}: must be a [low, high] pair, got {brief(bounds)}")
        low, high = _number(f"{where}[0]", bounds[0]), _number(f"{where}[1]", bounds[1])
        if not low < high:
            raise SpecError(f"{where}: low must be < high, got [{brief(bounds[0])}, {brief(bounds[1])}]")
        limit_low, limit_high, open_low = THRESHOLD_RANGES[key]
        if (low <= limit_low if open_low else low < limit_low) or high > limit_high:
            valid = validation.interval(limit_low, limit_high, open_low)
            raise SpecError(f"{where}: must lie within {key}'s valid range {valid}, got [{low:g}, {high:g}]")
        base_value = getattr(base, key)
        if not low <= base_value <= high:
            raise SpecError(
                f"base.{key}: {base_value:g} is outside the searched range space.{key} = [{low:g}, {high:g}]"
            )
        space[key] = (low, high)
    return space


def _warm_start(raw: dict, space: dict[str, tuple[float, float]]) -> tuple[dict[str, float], ...]:
    value = raw.get("warm_start")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(f"warm_start: must be a list of threshold mappings, got {type(value).__name__} {brief(value)}")
    points = []
    for index, point in enumerate(value):
        where = f"warm_start[{index}]"
        if not isinstance(point, dict) or not point:
            raise SpecError(f"{where}: must be a non-empty mapping of searched thresholds, got {brief(point)}")
        checked = {}
        for key, item in point.items():
            if key not in space:
                raise SpecError(f"{where}.{key}: not a searched threshold (searched: {', '.join(space)})")
            number = _number(f"{where}.{key}", item)
            low, high = space[key]
            if not low <= number <= high:
                raise SpecError(f"{where}.{key}: must be inside space.{key} = [{low:g}, {high:g}], got {brief(item)}")
            checked[key] = number
        points.append(checked)
    return tuple(points)


def _sampler(raw: dict) -> SamplerSpec:
    section = _section(raw, "sampler", [field.name for field in dataclasses.fields(SamplerSpec)])
    return SamplerSpec(
        name=_choice("sampler.name", section.get("name", "tpe"), SAMPLERS),
        seed=_integer("sampler.seed", section.get("seed", 0), 0),
        n_startup_trials=_integer("sampler.n_startup_trials", section.get("n_startup_trials", 8), 0),
    )


def _pruner(raw: dict) -> PrunerSpec:
    section = _section(raw, "pruner", [field.name for field in dataclasses.fields(PrunerSpec)])
    return PrunerSpec(
        name=_choice("pruner.name", section.get("name", "successive_halving"), PRUNERS),
        rungs=_integer("pruner.rungs", section.get("rungs", 4), 1),
        reduction_factor=_integer("pruner.reduction_factor", section.get("reduction_factor", 2), 2),
        n_startup_trials=_integer("pruner.n_startup_trials", section.get("n_startup_trials", 4), 0),
    )


def _heartbeat(raw: dict) -> HeartbeatSpec:
    section = _section(raw, "heartbeat", [field.name for field in dataclasses.fields(HeartbeatSpec)])
    interval = _integer("heartbeat.interval", section.get("interval", 60), 1)
    grace = _integer("heartbeat.grace", section.get("grace", 600), 1)
    if grace <= interval:
        raise SpecError(f"heartbeat.grace: must exceed heartbeat.interval ({interval}), got {grace}")
    outage = _integer("heartbeat.outage", section.get("outage", 300), 1)
    return HeartbeatSpec(interval=interval, grace=grace, outage=outage)


def _storage(value: Any) -> str:
    url = _string("storage", value)
    if not _SQL_URL.fullmatch(url):
        raise SpecError(
            f"storage: must be a SQLAlchemy URL (sqlite:///path.db, postgresql://user@host:5432/db or "
            f"mysql://...) or an Optuna journal file (journal:///path.log), got {brief(mask_url(url))}"
        )
    if url.startswith("journal:///"):  # an Optuna journal file: 'journal:///rel/optuna.log' -> absolute
        return "journal:///" + _abspath(url[len("journal:///") :], "storage").lstrip("/")
    return _resolve_sqlite(url, "storage") if url.startswith("sqlite:///") else url


def _tracking_uri(value: Any) -> str:
    uri = _string("tracking_uri", value)
    if uri.startswith("sqlite:///"):
        return _resolve_sqlite(uri, "tracking_uri")
    if re.match(r"(postgresql|mysql)(\+\w+)?://.+|https?://.+|file:///.+", uri):
        return uri
    if "://" in uri or uri.startswith("file:"):
        raise SpecError(
            f"tracking_uri: must be sqlite:///path.db, postgresql://..., http(s)://..., file:///path or a local "
            f"path, got {brief(mask_url(uri))}"
        )
    return _abspath(uri, "tracking_uri")
