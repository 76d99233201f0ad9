"""The one data layer: any video-QA table read through HuggingFace `datasets`, mapped to `Question`s by columns.

    from autotune.data.table import TableSpec, read_table
    table = TableSpec(name="my_qa", source="json", path="/data/my_qa.jsonl",
                      columns={"id": "qid", "video": "clip", "options": "choices"})
    report = read_table(table)          # questions, skipped rows with reasons, missing videos, column types
    print(report.summary())             # my_qa: 200 questions from 67 videos; skipped 1 (1 duplicate id)

Sources (`source`): json (JSON or JSONL), csv, parquet, disk (a `save_to_disk` directory), hub (a dataset id read
from the local Hugging Face cache, never downloaded), videofolder (videos beside a metadata.jsonl/csv). `path` is
a file, a glob, a directory, or the hub id. A table is read with `datasets.load_dataset` (one data file at a time,
so one unreadable file is counted and passed over) or `datasets.load_from_disk`; video columns are read as paths
(`datasets.Video(decode=False)`), never decoded here: decoding is `adatp.video`'s. A video stored as bytes in the
table (a `save_to_disk` of a `Video` column) is written once to `videos_dir`, named by its content hash. A CSV is
read as text, cell for cell ("NA" and "None" are options, not nulls; only a blank cell is empty).

Columns (`columns`: canonical name -> the table's column; a canonical name left out maps to the column of the same
name when there is one):
  id         unique question id (default: the row number); duplicates after the first are skipped and counted.
  video      a path (absolute, or relative to `video_root`), a file name under `video_root`, or a `Video` column.
  video_id   what groups questions of one video for the tune/test split (default: the video value).
  question   the question text (required).
  options    a list column, a dict column {A: text, B: text, ...}, or a list of columns [option0, option1, ...];
             values in `not_options` ("N/A", "") and nulls are dropped. Absent: the questions are open-ended.
  answer     the correct option as a letter, a 0-based index into the options as stored, or the option's text
             (`answer_format`: auto | letter | index | text); for open-ended questions, the gold text. Absent: the
             table is unlabelled (tuned for fidelity to the unpruned model).
Every other column goes into `Question.meta` (or only those named in `meta`). A row that cannot become a question
is skipped with a counted reason; a mapping that does not fit the table at all raises `TableError`, one line naming
the column. Benchmarks are presets of this adapter (`autotune.data.benchmarks`): data, not code.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import dataclasses
import glob as globbing
import hashlib
import os
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adatp.validation import RefusalError, brief
from autotune.data.protocol import MAX_OPTIONS, Question, SkipRow, letters

SOURCES = ("json", "csv", "parquet", "disk", "hub", "videofolder")
ANSWER_FORMATS = ("auto", "letter", "index", "text")
OPTION_PREFIXES = ("auto", "strip", "keep")
MISSING_VIDEO = ("error", "skip")
CANONICAL = ("id", "video", "video_id", "question", "options", "answer")
SUFFIX_SOURCES = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
                  ".parquet": "parquet"}
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
# Virtual columns every row carries, for templates and `derive`: its file's stem, that file's directory, its index in
# the file, and (with `interleave`) its index within its group.
VIRTUAL = ("_file", "_file_dir", "_index", "_group_index", "_row", "_lists")
_LETTER_PREFIX = re.compile(r"\s*\(?([A-Za-z])[.):]\s*(.*)", re.DOTALL)
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UTF8_CHUNK = 64 << 20  # bytes of a text file checked at a time
_LETTERS = letters(MAX_OPTIONS)  # sliced per row: letters(n) == _LETTERS[:n]


class TableError(RefusalError):
    """The table cannot be read as mapped (missing file, unknown column, a column of the wrong type, a split that is
    not there): one line, starting with the spec field it concerns."""


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """How to read one video-QA table (see the module docstring). Paths are absolute (the study spec resolves them).

    name: the dataset's name (Question.dataset, study and preset names). style: whose prompt wording and answer
        reading apply (videomme, mlvu, longvideobench; "" = Video-MME's wording for your own multiple-choice table).
    files: globs under `path` tried in order (the first that matches wins), for a `path` that is a directory.
    split: the split to read; None: the only one (else TableError listing them).
    video_root: where relative video paths are looked up (default: `path` if a directory, else its directory).
    video_dirs: folders under video_root tried in turn ("{column}" templates allowed); video_extensions: suffixes
        tried when the video value names no existing file.
    where: {column: value or [values]}: keep only matching rows. limit: at most this many questions, in order.
    subset: {n, stratify (a column or None), seed}: a seeded sample of n questions, proportional per stratum.
    interleave: a column; rows are ordered round-robin over its groups (first row of each group, then the second,
        ...), so a `limit` keeps every group.
    missing_video: error (reported, and the study refuses to start) | skip (skipped and counted).
    option_prefix: strip "A. " letter prefixes from options (auto: only when every option of the row has its own).
    not_options: option values that are not options (dropped; an answer index pointing at one skips the row).
    question_split: a regex; the question is cut at its first match (a question whose text embeds its options).
    raw_prompt: keep the stored question and option strings in meta (raw_question, raw_options), so prompts render
        the dataset's own text (lmms-eval does this for Video-MME, MLVU dev and LongVideoBench).
    id_template, video_id_template: "{column}" templates used where the id / video_id column is absent or empty.
    derive: {meta name: [column, regex, replacement]}: a meta field made from another column.
    required: columns that must be non-empty in a row (else it is skipped).
    meta: the columns kept in Question.meta; None: every column not mapped.
    """

    name: str
    source: str
    path: str
    style: str = ""
    files: tuple[str, ...] = ()
    split: str | None = None
    video_root: str | None = None
    columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    answer_format: str = "auto"
    where: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    limit: int | None = None
    subset: Mapping[str, Any] | None = None
    interleave: str | None = None
    missing_video: str = "error"
    video_dirs: tuple[str, ...] = (".",)
    video_extensions: tuple[str, ...] = VIDEO_SUFFIXES
    option_prefix: str = "auto"
    not_options: tuple[str, ...] = ("N/A", "")
    question_split: str | None = None
    raw_prompt: bool = False
    id_template: str | None = None
    video_id_template: str | None = None
    derive: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    required: tuple[str, ...] = ()
    meta: tuple[str, ...] | None = None


@dataclasses.dataclass
class TableReport:
    """What `read_table` read: the questions, what it skipped and why (reason -> count), the videos it could not
    find (qid -> path, each also counted as skipped with `missing_video: skip`), and what the table looks like."""

    questions: list[Question]
    skipped: collections.Counter
    dataset: str
    missing_videos: dict[str, str] = dataclasses.field(default_factory=dict)
    column_types: dict[str, str] = dataclasses.field(default_factory=dict)
    mapping: dict[str, Any] = dataclasses.field(default_factory=dict)
    rows: int = 0
    files: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def n_videos(self) -> int:
        return len({q.video_id for q in self.questions})

    @property
    def open_ended(self) -> bool:
        """No options column: every question is answered by generated text."""
        return "options" not in self.mapping

    @property
    def labelled(self) -> bool:
        return "answer" in self.mapping

    def summary(self) -> str:
        """One line: "videomme: 3 questions from 2 videos; skipped 2 (1 malformed row: no answer, 1 missing video)"."""
        line = f"{self.dataset}: {len(self.questions)} questions from {self.n_videos} videos"
        total = sum(self.skipped.values())
        if not total:
            return line + "; skipped 0"
        reasons = sorted(self.skipped.items(), key=lambda item: (-item[1], item[0]))
        return line + f"; skipped {total} (" + ", ".join(f"{count} {reason}" for reason, count in reasons) + ")"


# -- reading rows through `datasets` ---------------------------------------------------------------------------
@dataclasses.dataclass
class _Part:
    """One data file's rows (or a whole save_to_disk / hub table): where they came from, and their types."""

    file: Path
    rows: list[dict[str, Any]]
    features: dict[str, str]


def _natural(path: Path) -> list:
    """Sort key: 1_plotQA before 2_needle before 10_x (numbers compared as numbers)."""
    return [int(piece) if piece.isdigit() else piece.lower() for piece in re.split(r"(\d+)", str(path))]


def _data_files(table: TableSpec, base: Path) -> list[Path]:
    """The table's data files: `files` globs under a directory `path` (first that matches), or `path` as a file or a
    glob; every supported file under a directory when no glob is given."""
    if base.is_dir():
        for pattern in table.files:
            found = sorted((path for path in base.glob(pattern) if path.is_file()), key=_natural)
            if found:
                return found
        if table.files:
            raise TableError(f"dataset.path: no {' or '.join(table.files)} under {base}")
        suffixes = tuple(suffix for suffix, source in SUFFIX_SOURCES.items() if source == table.source)
        found = sorted((path for path in base.rglob("*") if path.is_file() and path.suffix.lower() in suffixes),
                       key=_natural)
        if not found:
            raise TableError(f"dataset.path: no {table.source} files under {base}")
        return found
    if base.is_file():
        return [base]
    found = sorted((Path(path) for path in globbing.glob(str(base), recursive=True) if os.path.isfile(path)),
                   key=_natural)
    if not found:
        raise TableError(f"dataset.path: {base} does not exist")
    return found


def _feature_types(features) -> dict[str, str]:
    """Column -> a short type name ("string", "int64", "list<string>", "Video", "struct", ...)."""
    import datasets

    def name(feature) -> str:
        if isinstance(feature, datasets.Value):
            return feature.dtype
        if isinstance(feature, datasets.Video):
            return "Video"
        if isinstance(feature, (datasets.List, datasets.LargeList)):
            return f"list<{name(feature.feature)}>"
        if isinstance(feature, dict):
            return "struct"
        return type(feature).__name__

    return {column: name(feature) for column, feature in features.items()}


def _as_paths(dataset):
    """Video columns read as {path, bytes}, never decoded (no torchcodec)."""
    import datasets

    for column, feature in dataset.features.items():
        if isinstance(feature, datasets.Video) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Video(decode=False))
    return dataset


def _rows(dataset, videos_dir: str | None) -> list[dict[str, Any]]:
    """The dataset's rows. A `Video` column's stored bytes (a save_to_disk keeps only the base name as its path) are
    written to `videos_dir` a batch at a time, so a table of embedded videos is never in memory whole; its values
    become {path: the stored name, file: the written file}, without the bytes."""
    import datasets

    columns = [column for column, feature in dataset.features.items() if isinstance(feature, datasets.Video)]
    if not columns:
        return dataset.to_list()
    videos = {column: [] for column in columns}
    for batch in dataset.select_columns(columns).iter(batch_size=16):
        for column in columns:
            videos[column] += [_stored_video(value, videos_dir) for value in batch[column]]
    others = dataset.remove_columns(columns)
    rows = others.to_list() if others.column_names else [{} for _ in range(len(dataset))]
    for column in columns:
        for row, value in zip(rows, videos[column], strict=True):
            row[column] = value
    return rows


def _stored_video(value: Mapping[str, Any] | None, videos_dir: str | None) -> dict[str, Any] | None:
    """A `Video` value without its bytes: {path, file} where the bytes were written to `videos_dir` (once, named by
    their content hash), else {path} alone (the path is then looked up as any other)."""
    if value is None or not value.get("bytes"):
        return None if value is None else {"path": value.get("path")}
    data, stored = value["bytes"], value.get("path") or ""
    if videos_dir is None:
        return {"path": stored}
    name = f"{hashlib.sha256(data).hexdigest()[:24]}{Path(stored).suffix or '.mp4'}"
    path = Path(videos_dir) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{name}.{os.getpid()}.tmp")
        partial.write_bytes(data)
        os.replace(partial, path)
    return {"path": stored or name, "file": os.path.abspath(path)}


def _pick_split(table: TableSpec, loaded, where: str) -> Any:
    import datasets

    if not isinstance(loaded, datasets.DatasetDict):
        return loaded
    names = list(loaded)
    if table.split is not None:
        if table.split not in loaded:
            raise TableError(f"dataset.split: no split {brief(table.split)} in {where} (splits: {', '.join(names)})")
        return loaded[table.split]
    if len(names) != 1:
        raise TableError(f"dataset.split: {where} has splits {', '.join(names)}; say which one")
    return loaded[names[0]]


def _utf8_problem(path: Path) -> str | None:
    """Where a text file stops being UTF-8 ("byte 0xe9 at offset 1,234"), reading `_UTF8_CHUNK` bytes at a time (a
    character cut by a chunk boundary is carried over; one cut by the end of the file is a problem too)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # of the chunk read next
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(_UTF8_CHUNK)
            pending = decoder.getstate()[0]  # the start of a character the previous chunk cut
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                data = pending + chunk
                return f"byte 0x{data[error.start]:02x} at offset {offset - len(pending) + error.start:,}"
            if not chunk:
                return None
            offset += len(chunk)


def _load_file(table: TableSpec, path: Path, cache_dir: str | None, skipped: collections.Counter,
               videos_dir: str | None = None) -> _Part | None:
    """One data file through `datasets.load_dataset`; None (counted as an unreadable file) when it cannot be read.
    A JSON file whose rows datasets cannot type as one table (a row that is not an object, a column that changes
    type) is read row by row instead, and each such row skipped and counted."""
    import datasets

    builder = SUFFIX_SOURCES.get(path.suffix.lower(), table.source)
    if builder in ("json", "csv"):
        problem = _utf8_problem(path)
        if problem is not None:
            raise TableError(f"dataset.path: {path} is not UTF-8 text ({problem}); save it as UTF-8")
    kwargs = _csv_options(path) if builder == "csv" else {}
    try:
        loaded = datasets.load_dataset(builder, data_files=str(path), split="train", cache_dir=cache_dir, **kwargs)
    except Exception as error:  # datasets wraps every reader failure; the file is counted, the load goes on
        rows = _json_rows(path, skipped) if builder == "json" else None
        if rows is None:
            skipped[f"unreadable file: {path.name}"] += 1
            del error
            return None
        columns = list(dict.fromkeys(column for row in rows for column in row))  # every row's columns, in order
        loaded = datasets.Dataset.from_dict({c: [row.get(c) for row in rows] for c in columns}) if rows else None
        if loaded is None:
            return _Part(path, [], {})
    loaded = _as_paths(loaded)
    return _Part(path, _rows(loaded, videos_dir), _feature_types(loaded.features))


def _csv_options(path: Path) -> dict[str, Any]:
    """`load_dataset("csv")` options that read every cell as the text written ("None", "NA", "007", "3" stay
    strings; only a blank cell is null), where pandas would make "NA" a null and a column of digits numbers."""
    import csv

    import datasets

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle, delimiter=delimiter), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"delimiter": delimiter, "features": features, "keep_default_na": False, "na_values": [""]}


def _json_rows(path: Path, skipped: collections.Counter) -> list[dict[str, Any]] | None:
    """A JSON (list) or JSONL file datasets could not type: its object rows, each column's majority kind kept and
    the rows of another kind skipped as "malformed row: COLUMN has wrong type", a JSONL line that is not JSON (one
    cut short by a killed writer) as "malformed row: not JSON"; None if it is not JSON at all."""
    import json

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = _json_lines(text, skipped)
    if not isinstance(rows, list):
        return None
    objects = [row for row in rows if isinstance(row, dict)]
    if len(objects) < len(rows):
        skipped["malformed row: not an object"] += len(rows) - len(objects)
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for row in objects:
        for column, value in row.items():
            if value is not None:
                kinds[column][_kind(value)] += 1
    majority = {column: counts.most_common(1)[0][0] for column, counts in kinds.items()}
    kept = []
    for row in objects:
        wrong = next((column for column, value in row.items()
                      if value is not None and _kind(value) != majority[column]), None)
        if wrong is None:
            kept.append(row)
        else:
            skipped[f"malformed row: {wrong} has wrong type"] += 1
    return kept


def _json_lines(text: str, skipped: collections.Counter) -> list[Any] | None:
    """The values of a JSONL text's lines, each line that is not JSON counted; None when no line is a JSON object
    (then it is no JSONL at all: a broken JSON document, say)."""
    import json

    rows, broken = [], 0
    for line in text.splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                broken += 1
    if broken and not any(isinstance(row, dict) for row in rows):
        return None
    if broken:
        skipped["malformed row: not JSON"] += broken
    return rows


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return type(value).__name__


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a hub dataset repo (HF_HUB_OFFLINE-safe: only the local cache is read)."""
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except Exception as error:  # not cached, or not a valid id: huggingface_hub raises several kinds
        raise TableError(f"dataset.path: {repo_id} is not in the local Hugging Face cache "
                         f"({type(error).__name__}); download it once with `huggingface-cli download --repo-type "
                         f"dataset {repo_id}`") from None


def table_base(table: TableSpec) -> Path:
    """Where the table lives on disk: `path`, or for `hub` the local snapshot of the repo."""
    return _hub_snapshot(table.path) if table.source == "hub" else Path(table.path)


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or log lines from `datasets` while a table is read: what it skipped and why is counted in the
    report (a JSON file datasets cannot type logs an ERROR that we answer by reading it row by row)."""
    import datasets

    bars = datasets.utils.are_progress_bars_disabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL + 10)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not bars:
            datasets.enable_progress_bars()


def read_parts(table: TableSpec, cache_dir: str | None = None, skipped: collections.Counter | None = None,
               videos_dir: str | None = None) -> tuple[Path, list[_Part]]:
    """(base directory, the table's rows by part), read through `datasets` (quietly: `_quiet_datasets`); videos
    stored as bytes are written to `videos_dir` (see `_rows`)."""
    with _quiet_datasets():
        return _read_parts(table, cache_dir, skipped, videos_dir)


def _read_parts(table: TableSpec, cache_dir: str | None, skipped: collections.Counter | None,
                videos_dir: str | None) -> tuple[Path, list[_Part]]:
    import datasets

    skipped = skipped if skipped is not None else collections.Counter()
    base = table_base(table)
    if table.source == "disk":
        if not base.is_dir():
            raise TableError(f"dataset.path: {base} is not a save_to_disk directory")
        try:
            loaded = _as_paths(_pick_split(table, datasets.load_from_disk(str(base)), str(base)))
        except FileNotFoundError as error:
            raise TableError(f"dataset.path: {base} is not a save_to_disk directory ({error})") from None
        return base, [_Part(base, _rows(loaded, videos_dir), _feature_types(loaded.features))]
    if table.source == "videofolder":
        if not base.is_dir():
            raise TableError(f"dataset.path: {base} is not a directory of videos")
        loaded = _as_paths(_pick_split(table, datasets.load_dataset("videofolder", data_dir=str(base),
                                                                    cache_dir=cache_dir), str(base)))
        return base, [_Part(base, _rows(loaded, videos_dir), _feature_types(loaded.features))]
    if table.source == "hub" and not table.files:
        loaded = _as_paths(_pick_split(table, datasets.load_dataset(str(base), cache_dir=cache_dir), table.path))
        return base, [_Part(base, _rows(loaded, videos_dir), _feature_types(loaded.features))]
    parts = [part for path in _data_files(table, base)
             if (part := _load_file(table, path, cache_dir, skipped, videos_dir))]
    return (base if base.is_dir() else base.parent), parts


# -- mapping rows to questions --------------------------------------------------------------------------------
def resolve_mapping(table: TableSpec, columns: set[str], notes: list[str] | None = None) -> dict[str, Any]:
    """canonical -> the table's column(s), after defaults (same-named columns); TableError for a named column that
    the table does not have (in a list of option columns, only when none of them is there; the others are noted)."""
    mapping: dict[str, Any] = {}
    notes = notes if notes is not None else []
    for canonical in CANONICAL:
        given = table.columns.get(canonical)
        if given is None:
            if canonical in columns:
                mapping[canonical] = canonical
            continue
        names = given if isinstance(given, (list, tuple)) else [given]
        unknown = [name for name in names if name not in columns]
        if unknown and isinstance(given, (list, tuple)) and len(unknown) < len(names):
            notes.append(f"dataset.columns.{canonical}: {', '.join(unknown)} not in the table (read as absent)")
            unknown = []
        if unknown:
            raise TableError(f"dataset.columns.{canonical}: no column {brief(unknown[0])} in the table "
                             f"(columns: {_names(columns)})")
        mapping[canonical] = list(given) if isinstance(given, (list, tuple)) else given
    for canonical in ("video", "question"):
        if canonical not in mapping:
            raise TableError(f"dataset.columns.{canonical}: the table has no {canonical} column; map one "
                             f"(columns: {{{canonical}: ...}}; the table's: {_names(columns)})")
    return mapping


def _names(columns: set[str]) -> str:
    """The table's columns for a message: the first 20, sorted."""
    return (", ".join(sorted(columns)[:20]) + (" ..." if len(columns) > 20 else "")) or "none"


_TYPE_RULES = {  # canonical -> (accepted type names, what it must be)
    "question": (("string", "large_string"), "text"),
    "video": (("string", "large_string", "Video", "struct"), "a path or a Video column"),
    "id": (("string", "large_string", "int64", "int32"), "text or an integer"),
}


# Column types whose values are checked row by row instead: all null, or `Json` (datasets' type for a JSON column
# whose values differ in type; a row whose value cannot be what the column is mapped to is skipped and counted).
_ANY_TYPE = ("null", "Json")


def check_types(mapping: Mapping[str, Any], types: Mapping[str, str]) -> None:
    """TableError when a mapped column's type (as `datasets` typed it) cannot be what it is mapped to."""
    for canonical, (accepted, what) in _TYPE_RULES.items():
        column = mapping.get(canonical)
        if isinstance(column, str) and types.get(column, "null") not in (*accepted, *_ANY_TYPE):
            raise TableError(f"dataset.columns.{canonical}: column {brief(column)} is {types[column]}, must be {what}")
    options = mapping.get("options")
    if isinstance(options, str) and options in types:
        kind = types[options]
        if not (kind.startswith("list<") or kind == "struct" or kind in _ANY_TYPE):
            raise TableError(f"dataset.columns.options: column {brief(options)} is {kind}, must be a list or a dict of "
                             "option texts (or give a list of columns: [option0, option1, ...])")
    answer = mapping.get("answer")
    if isinstance(answer, str) and types.get(answer, "string").startswith("list<"):
        raise TableError(f"dataset.columns.answer: column {brief(answer)} is {types[answer]}, must be a letter, an "
                         "index or a text")


def _fill(template: str, row: Mapping[str, Any]) -> str:
    if "{" not in template:
        return template

    def value(match: re.Match) -> str:
        found = row.get(match.group(1))
        if found is None:
            raise SkipRow(f"malformed row: no {match.group(1)}")
        return str(found)

    return _TEMPLATE_FIELD.sub(value, template)


def _text(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SkipRow(f"malformed row: no {column}")
    if not isinstance(value, str):
        raise SkipRow(f"malformed row: {column} has wrong type")
    return value


def _raw_options(table: TableSpec, mapping: Mapping[str, Any], row: Mapping[str, Any]) -> list[Any]:
    """The options as stored (not-options included): a list column, a dict column in letter order, or columns (up
    to the last one present; a list column among them, e.g. LongVideoBench's `candidates`, is spliced in)."""
    column = mapping["options"]
    if isinstance(column, list):
        raw: list[Any] = []
        for name in column:
            value = row.get(name)
            if isinstance(value, (list, tuple)):
                raw.extend(value)
            elif name in row and (value is not None or name not in table_list_columns(row)):
                raw.append(value)
        while raw and raw[-1] is None:
            raw.pop()
        return raw
    value = row.get(column)
    if value is None:
        return []
    if isinstance(value, dict):
        value = [value[key] for key in sorted(value, key=str) if value[key] is not None]
    if not isinstance(value, (list, tuple)):
        raise SkipRow(f"malformed row: {column} has wrong type")
    return list(value)


def table_list_columns(row: Mapping[str, Any]) -> frozenset:
    """The list-typed columns of the row's table (carried by every row as `_lists`)."""
    return row.get("_lists", frozenset())


def _strip_letter(option: str, letter: str) -> str | None:
    """The option text without its own letter prefix ("B. a red car" -> "a red car"), None if it has none."""
    match = _LETTER_PREFIX.fullmatch(option)
    return match.group(2).strip() if match and match.group(1).upper() == letter else None


def _options(table: TableSpec, raw: list[Any], column: str) -> tuple[list[str], list[bool]]:
    """(kept option texts, which raw entries were kept)."""
    if not all(value is None or isinstance(value, str) for value in raw):
        raise SkipRow(f"malformed row: {column} has wrong type")
    kept = [value is not None and value.strip() not in table.not_options and value not in table.not_options
            for value in raw]
    texts = [value for value, keep in zip(raw, kept, strict=True) if keep]
    names = _LETTERS[: max(len(texts), 1)]
    stripped = [_strip_letter(text, letter) for text, letter in zip(texts, names, strict=False)]
    if table.option_prefix == "strip" or (table.option_prefix == "auto" and texts
                                          and all(s is not None for s in stripped)):
        return [s if s is not None else t.strip() for s, t in zip(stripped, texts, strict=False)], kept
    return [text.strip() for text in texts], kept


def _answer_letter(table: TableSpec, value: Any, raw: list[Any], kept: list[bool], options: list[str]) -> str:
    """The answer as a letter of the kept options, read as `answer_format` says (auto: an int is an index, a valid
    letter a letter, else the option's text; a CSV holds only text, so there a number is an index too)."""
    names = _LETTERS[: len(options)]
    fmt = table.answer_format
    if isinstance(value, bool) or value is None or not isinstance(value, (str, int)):
        raise SkipRow("malformed row: answer has wrong type")
    number = isinstance(value, int) or (table.source == "csv" and value.strip().isdigit())
    if fmt == "index" or (fmt == "auto" and number):
        index = value if isinstance(value, int) else int(value) if str(value).strip().isdigit() else -1
        if not 0 <= index < len(raw):
            raise SkipRow("malformed row: answer not among options")
        if not kept[index]:
            raise SkipRow("malformed row: answer is N/A")
        return names[sum(kept[:index])]
    text = str(value).strip()
    if fmt in ("letter", "auto") and len(text) == 1 and text.isalpha():
        if text.upper() in names:
            return text.upper()
        if fmt == "letter" or text.upper() not in [o.strip().upper() for o in options]:
            raise SkipRow("malformed row: answer not among options")
    if fmt == "letter":
        raise SkipRow("malformed row: answer not among options")
    for same in (lambda option: option == str(value), lambda option: option.strip() == text):
        hits = [index for index, option in enumerate(options) if same(option)]
        if hits:
            return names[hits[0]]
    raise SkipRow("malformed row: answer not among options")


def _meta(table: TableSpec, mapping: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    used = {name for value in mapping.values() for name in (value if isinstance(value, list) else [value])}
    names = table.meta if table.meta is not None else [c for c in row if c not in used and c not in VIRTUAL]
    meta: dict[str, Any] = {}
    for name in names:
        value = row.get(name)
        if name == "meta" and isinstance(value, dict):
            meta.update(value)
        elif value is not None:
            meta[name] = value
    for name, (column, pattern, replacement) in table.derive.items():
        if row.get(column) is not None:
            meta[name] = re.sub(pattern, replacement, str(row[column]), count=1)
    return meta


class _Videos:
    """Finds each row's video file: under video_root in `video_dirs`, with `video_extensions` tried, or the file a
    video stored as bytes was written to (`_stored_video`)."""

    def __init__(self, table: TableSpec, root: Path) -> None:
        self.table, self.root = table, root
        self._looked_up: dict[tuple[str, ...], Path | None] = {}  # folders + stored value -> the file found, if any

    def value(self, row: Mapping[str, Any], column: str) -> tuple[str, str | None]:
        """(the path as stored, the file its stored bytes were written to, or None)."""
        value = row.get(column)
        if isinstance(value, dict):  # a datasets.Video column: {path} or {path, file}
            if not value.get("path"):
                raise SkipRow(f"malformed row: no {column}")
            return str(value["path"]), value.get("file")
        if value is None or (isinstance(value, str) and not value.strip()):
            raise SkipRow(f"malformed row: no {column}")
        if not isinstance(value, str):
            raise SkipRow(f"malformed row: {column} has wrong type")
        return value, None

    def find(self, row: Mapping[str, Any], stored: str, written: str | None) -> tuple[Path, bool]:
        """(absolute path, whether the file is there): the written file of stored bytes (the bytes are the video,
        whatever file of that name lies around), else the lookup. Each (folders, value) is looked up once per read:
        a table of 400k questions over 10 videos stats 10 files, not 400k."""
        if written is not None:
            return Path(written), True
        folders = tuple(_fill(folder, row) for folder in self.table.video_dirs)
        key = (*folders, stored)
        if key not in self._looked_up:
            self._looked_up[key] = self._lookup(folders, stored)
        found = self._looked_up[key]
        if found is not None:
            return found, True
        return Path(os.path.abspath(self.root / folders[0] / stored)), False

    def relative(self, stored: str) -> str:
        """An absolute stored path below video_root made relative to it (a videofolder's or a hub snapshot's file,
        so that the video id, and with it the tune/test split, does not depend on where the copy lies)."""
        root = os.path.abspath(self.root)
        if os.path.isabs(stored) and os.path.commonpath([stored, root]) == root:
            return Path(os.path.relpath(stored, root)).as_posix()
        return stored

    def _lookup(self, folders: tuple[str, ...], stored: str) -> Path | None:
        """The first existing file of `stored` under the folders (the extensions tried for a name without one)."""
        for folder in folders:
            path = self.root / folder / stored
            for candidate in [path] + [path.with_name(path.name + suffix) for suffix in self.table.video_extensions
                                       if not path.suffix]:
                if candidate.is_file():  # absolute, symlinks kept: a hub snapshot's file, not the blob it links to
                    return Path(os.path.abspath(candidate))
        return None


def _parse(table: TableSpec, mapping: Mapping[str, Any], videos: _Videos,
           row: dict[str, Any]) -> tuple[Question, bool]:
    """(the row's question, whether its video file is there)."""
    for column in table.required:
        if row.get(column) is None or (isinstance(row.get(column), str) and not row[column].strip()):
            raise SkipRow(f"malformed row: no {column}")
    qid_value = row.get(mapping["id"]) if "id" in mapping else None
    if qid_value is None or isinstance(qid_value, bool) or not str(qid_value).strip():
        qid = _fill(table.id_template, row) if table.id_template else f"row{row['_row']}"
    elif isinstance(qid_value, (str, int)):
        qid = str(qid_value)
    else:
        raise SkipRow(f"malformed row: {mapping['id']} has wrong type")
    question = _text(row, mapping["question"])
    options: list[str] = []
    answer: str | None = None
    if "options" in mapping:
        raw = _raw_options(table, mapping, row)
        options, kept = _options(table, raw, mapping["options"] if isinstance(mapping["options"], str) else "options")
        if not options:
            raise SkipRow("open-ended question (no options)")
        if not 2 <= len(options) <= MAX_OPTIONS:
            raise SkipRow("malformed row: wrong number of options")
        if "answer" in mapping:
            value = row.get(mapping["answer"])
            if value is None or (isinstance(value, str) and not value.strip()):
                raise SkipRow(f"malformed row: no {mapping['answer']}")
            answer = _answer_letter(table, value, raw, kept, options)
    elif "answer" in mapping:
        value = row.get(mapping["answer"])
        if value is None or (isinstance(value, str) and not value.strip()):
            raise SkipRow(f"malformed row: no {mapping['answer']}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SkipRow(f"malformed row: {mapping['answer']} has wrong type")
        answer = str(value).strip()
    stored, written = videos.value(row, mapping["video"])
    path, present = videos.find(row, stored, written)
    video_id = _video_id(table, mapping, row, videos.relative(stored))
    meta = _meta(table, mapping, row)
    if table.raw_prompt and options:
        meta["raw_question"] = question
        meta["raw_options"] = [value for value, keep in zip(raw, kept, strict=True) if keep]
    stem = re.split(table.question_split, question, maxsplit=1)[0] if table.question_split else question
    return Question(qid, table.name, video_id, str(path), stem.strip(), tuple(options), answer, meta,
                    style=table.style), present


def _video_id(table: TableSpec, mapping: Mapping[str, Any], row: Mapping[str, Any], stored: str) -> str:
    value = row.get(mapping["video_id"]) if "video_id" in mapping else None
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
        return str(value)
    if table.video_id_template:
        return _fill(table.video_id_template, row)
    return stored


# -- order, filters, subsets ----------------------------------------------------------------------------------
def _matches(row: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether the row has one of the wanted values in every `where` column (a number also matches its text, as a
    CSV stores it: {level: 2} keeps level "2")."""
    for column, wanted in where.items():
        value = row.get(column)
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if value not in allowed and not (isinstance(value, str) and value in
                                         [str(w) for w in allowed if isinstance(w, (int, float))
                                          and not isinstance(w, bool)]):
            return False
    return True


def check_where(where: Mapping[str, Any], columns: set[str]) -> None:
    """TableError for a `where` column the table does not have (it would keep no row, silently)."""
    for column in where:
        if column not in columns and column not in VIRTUAL:
            raise TableError(f"dataset.where: no column {brief(column)} in the table (columns: {_names(columns)})")


def _interleaved(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Round-robin over the groups of `column` in order of first appearance (rows without a value last); each row
    gets `_group_index`, its index within its group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        value = row.get(column)
        key = str(value) if value is not None and str(value) else ""
        group = groups.setdefault(key, [])
        group.append({**row, "_group_index": len(group)})
    ordered = sorted(groups.items(), key=lambda item: item[0] == "")
    width = max((len(group) for _, group in ordered), default=0)
    return [group[index] for index in range(width) for _, group in ordered if index < len(group)]


def stratified_subset(questions: list[Question], n: int, stratify: str | None, seed: int) -> list[Question]:
    """A seeded sample of `n` questions, each stratum (a meta field, or answer / video_id) getting its share by
    largest remainder; the input order is kept."""
    if n >= len(questions):
        return list(questions)
    draw = random.Random(seed)
    if stratify is None:
        chosen = set(draw.sample(range(len(questions)), n))
        return [q for index, q in enumerate(questions) if index in chosen]
    strata: dict[str, list[int]] = collections.defaultdict(list)
    for index, question in enumerate(questions):
        value = getattr(question, stratify) if stratify in ("answer", "video_id") else question.meta.get(stratify)
        strata[str(value)].append(index)
    quotas = {name: n * len(members) / len(questions) for name, members in strata.items()}
    counts = {name: int(quota) for name, quota in quotas.items()}
    for name in sorted(quotas, key=lambda k: (counts[k] - quotas[k], k))[: n - sum(counts.values())]:
        counts[name] += 1
    chosen = {index for name in sorted(strata) for index in draw.sample(strata[name], counts[name])}
    return [q for index, q in enumerate(questions) if index in chosen]


def _numbered(parts: list[_Part], lists: frozenset) -> Iterator[dict[str, Any]]:
    number = 0
    for part in parts:
        stem, folder = part.file.stem, str(part.file.parent)
        for index, row in enumerate(part.rows):
            yield {**row, "_file": stem, "_file_dir": folder, "_index": index, "_row": number, "_lists": lists}
            number += 1


def read_table(table: TableSpec, cache_dir: str | None = None, videos_dir: str | None = None) -> TableReport:
    """The table's questions (see the module docstring), with every skip counted and every missing video listed.

    TableError for a table that cannot be read as mapped; a row that cannot become a question never stops the load.
    """
    skipped: collections.Counter = collections.Counter()
    base, parts = read_parts(table, cache_dir, skipped, videos_dir)
    if not any(part.rows for part in parts):
        problems = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items())) or "no data rows"
        raise TableError(f"dataset.path: nothing to read in {table.path} ({problems})")
    types: dict[str, str] = {}
    for part in parts:
        for column, kind in part.features.items():
            types.setdefault(column, kind)
    notes: list[str] = []
    mapping = resolve_mapping(table, set(types), notes)
    check_types(mapping, types)
    check_where(table.where, set(types))
    lists = frozenset(column for column, kind in types.items() if kind.startswith("list<"))
    rows = [row for row in _numbered(parts, lists) if _matches(row, table.where)]
    if table.where:
        notes.append(f"dataset.where: kept {len(rows)} of {sum(len(part.rows) for part in parts)} rows")
    if table.interleave:
        rows = _interleaved(rows, table.interleave)
    root = Path(table.video_root) if table.video_root else base
    report = TableReport([], skipped, table.name, column_types=types, mapping=mapping,
                         rows=sum(len(part.rows) for part in parts), files=[str(part.file) for part in parts])
    report.notes += notes + _option_count_notes(table, mapping, rows)
    _collect(table, mapping, _Videos(table, root), rows, report)
    return report


def _collect(table: TableSpec, mapping: Mapping[str, Any], videos: _Videos, rows: list[dict[str, Any]],
             report: TableReport) -> None:
    """Parse rows in order into `report` until `limit` questions (after `subset`), counting each skip."""
    seen: set[str] = set()
    limit = None if table.subset else table.limit
    missing: dict[str, str] = {}
    for row in rows:
        try:
            question, present = _parse(table, mapping, videos, row)
        except SkipRow as skip:
            report.skipped[skip.reason] += 1
            continue
        except (ValueError, TypeError):
            report.skipped["malformed row: invalid"] += 1
            continue
        if question.qid in seen:
            report.skipped["duplicate id"] += 1
            continue
        seen.add(question.qid)
        if not present:
            if table.missing_video == "skip":
                report.skipped["missing video"] += 1
                continue
            missing[question.qid] = question.video_path
        report.questions.append(question)
        if limit is not None and len(report.questions) >= limit:
            break
    report.missing_videos = {q.qid: missing[q.qid] for q in report.questions if q.qid in missing}
    if table.subset:
        subset = table.subset
        report.questions = stratified_subset(report.questions, subset["n"], subset.get("stratify"),
                                             subset.get("seed", 0))
        if table.limit is not None:
            report.questions = report.questions[: table.limit]
        kept = {q.qid for q in report.questions}
        report.missing_videos = {qid: path for qid, path in report.missing_videos.items() if qid in kept}


def _option_count_notes(table: TableSpec, mapping: Mapping[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """A note for rows whose option count differs from the table's usual one (a 5-option row in a 4-option set)."""
    if "options" not in mapping:
        return []
    counts: collections.Counter = collections.Counter()
    examples: dict[int, str] = {}
    for row in rows:
        try:
            raw = _raw_options(table, mapping, row)
        except SkipRow:
            continue
        n = sum(value is not None and isinstance(value, str) and value.strip() not in table.not_options
                for value in raw)
        counts[n] += 1
        qid = row.get(mapping["id"]) if "id" in mapping else None
        examples.setdefault(n, f"row{row['_row']}" if qid is None or not str(qid).strip() else str(qid))
    if len(counts) < 2:
        return []
    usual = counts.most_common(1)[0][0]
    return [f"{count} row(s) with {n} options where {counts[usual]} have {usual} (first: {examples[n]})"
            for n, count in sorted(counts.items()) if n != usual]
