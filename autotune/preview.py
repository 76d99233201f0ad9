"""`autotune data SPEC`: a preview and preflight of the spec's table before any model loads (and before GPU time is
paid for): counts, column types and mapping, option and answer histograms, the first prompts exactly as the model
will see them, every skipped row by reason, and every missing or unreadable video in one report.

    report = preflight(spec)              # reads the table, probes each video (decord/PyAV open + frame count)
    print("\\n".join(report.lines()))
    report.blocking                        # what would stop `autotune study` (missing videos, no questions)
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from pathlib import Path

from autotune.data import Question, TableReport, split_by_video
from autotune.spec import StudySpec

PROMPTS_SHOWN = 3


@dataclasses.dataclass
class Preflight:
    """What `autotune data` found. `unreadable`: video path -> why it cannot be decoded (files that exist)."""

    spec: StudySpec
    report: TableReport
    prompts: list[tuple[Question, str]]
    prompt_source: str
    unreadable: dict[str, str]
    probed: int
    answers: tuple[str, str, str]  # objective, mode, metric as the study would resolve them
    notes: list[str]

    @property
    def blocking(self) -> list[str]:
        """One line per problem that stops `autotune study` from starting."""
        problems = []
        if not self.report.questions:
            problems.append("no question left to tune on")
        if self.report.missing_videos:
            problems.append(f"{len(self.report.missing_videos)} missing videos (dataset.missing_video: skip tunes "
                            "without them)")
        return problems

    def lines(self) -> list[str]:
        """The report as printed: sections in the order a user checks a table."""
        report, spec = self.report, self.spec
        out = [f"dataset {spec.dataset.name}: {report_source(spec)} ({len(report.files)} file(s), {report.rows:,} "
               f"rows)"]
        out += _column_lines(report)
        out.append(report.summary())
        kind = "open-ended" if report.open_ended else "multiple-choice"
        labelled = "labelled" if report.labelled else "unlabelled"
        objective, mode, metric = self.answers
        out.append(f"questions: {kind}, {labelled} -> objective {objective}, mode {mode}, metric {metric}")
        out += _histogram_lines(report)
        out += [f"note: {note}" for note in [*report.notes, *self.notes]]
        out += _split_lines(spec, report)
        out += self._prompt_lines()
        out += self._video_lines()
        return out

    def _prompt_lines(self) -> list[str]:
        out = [f"first {len(self.prompts)} prompts ({self.prompt_source}):"]
        for index, (question, prompt) in enumerate(self.prompts, 1):
            answer = "" if question.answer is None else f", answer {question.answer!r}"
            out.append(f"--- [{index}] {question.qid}: video {question.video_path}{answer}")
            out += prompt.splitlines() or [""]
        return out + ["---"]

    def _video_lines(self) -> list[str]:
        report = self.report
        videos = {q.video_path for q in report.questions}
        missing = sorted(set(report.missing_videos.values()))
        out = [f"videos: {len(videos):,} distinct, {len(videos) - len(missing):,} found, {len(missing):,} missing, "
               f"{len(self.unreadable):,} unreadable (probed {self.probed:,})"]
        by_video = collections.defaultdict(list)
        for qid, path in report.missing_videos.items():
            by_video[path].append(qid)
        out += [f"missing: {path} (questions: {', '.join(_cut(by_video[path]))})" for path in missing]
        out += [f"unreadable: {path}: {reason}" for path, reason in sorted(self.unreadable.items())]
        return out


def _cut(items: list[str], limit: int = 5) -> list[str]:
    return items if len(items) <= limit else [*items[:limit], f"... ({len(items):,} in all)"]


def report_source(spec: StudySpec) -> str:
    data = spec.dataset
    what = f"preset {data.preset}" if data.preset else f"{data.source} table"
    return f"{what} at {data.root}"


def _column_lines(report: TableReport) -> list[str]:
    mapped = {}
    for canonical, column in report.mapping.items():
        for name in column if isinstance(column, list) else [column]:
            mapped.setdefault(name, []).append(canonical)
    parts = [f"{column} ({kind})" + (f" -> {', '.join(mapped[column])}" if column in mapped else "")
             for column, kind in report.column_types.items()]
    absent = [name for name in ("options", "answer") if name not in report.mapping]
    line = "columns: " + ", ".join(parts)
    return [line] + ([f"absent: {', '.join(absent)} (see the questions line)"] if absent else [])


def _histogram_lines(report: TableReport) -> list[str]:
    questions = report.questions
    if not questions or report.open_ended:
        lengths = collections.Counter(len((q.answer or "").split()) for q in questions if q.answer is not None)
        return [f"answer length (words): {_counts(lengths)}"] if lengths else []
    options = collections.Counter(len(q.options) for q in questions)
    out = [f"options per question: {_counts(options)}"]
    if report.labelled:
        answers = collections.Counter(q.answer for q in questions)
        out.append(f"answer letters: {_counts(answers)}")
    return out


def _counts(counter: collections.Counter) -> str:
    return ", ".join(f"{key}: {count:,}" for key, count in sorted(counter.items(), key=lambda item: str(item[0])))


def _split_lines(spec: StudySpec, report: TableReport) -> list[str]:
    if not report.questions:
        return []
    tune, test = split_by_video(report.questions, spec.dataset.test_fraction, spec.dataset.split_seed)
    return [f"split by video (test_fraction {spec.dataset.test_fraction:g}, seed {spec.dataset.split_seed}): "
            f"{len(tune):,} tune, {len(test):,} test questions"]


def rendered_prompts(spec: StudySpec, questions: list[Question]) -> tuple[list[str], str]:
    """The prompts through the model's own tokenizer and chat template (no weights load), with the video placeholder
    as the template writes it; when the tokenizer cannot be read, the user text alone (and why)."""
    from autotune.data import build_prompt

    try:
        from transformers import AutoTokenizer

        from autotune.engine import render_prompt

        tokenizer = AutoTokenizer.from_pretrained(spec.model.path, trust_remote_code=spec.model.trust_remote_code)
        return [render_prompt(tokenizer, q) for q in questions], f"through {Path(spec.model.path).name}'s chat template"
    except Exception as error:  # any tokenizer that cannot be read: say so, show the user text
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
        return [build_prompt(q) for q in questions], f"user text only: the model's tokenizer cannot be read ({first})"


def probe_videos(paths: list[str], progress: bool = True,
                 probe: Callable[[str], object] | None = None) -> dict[str, str]:
    """Path -> reason for each video that exists but cannot be opened and counted (decord, else PyAV)."""
    from adatp.video import VideoError, video_fps_and_length

    probe = probe or video_fps_and_length
    unreadable = {}
    if progress:
        from tqdm import tqdm

        paths = tqdm(paths, desc="probing videos", unit="video", leave=False)
    for path in paths:
        try:
            probe(path)
        except (VideoError, OSError) as error:
            unreadable[path] = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return unreadable


def preflight(spec: StudySpec, probe: bool = True, progress: bool = True) -> Preflight:
    """Read the spec's table (TableError if it cannot be read as mapped), render the first prompts and probe every
    video found, without loading any model weights."""
    from autotune.workspace import StudyError, read_spec_table, resolve_answers

    report = read_spec_table(spec)
    notes: list[str] = []
    try:
        resolved, notes = resolve_answers(spec, report)
        answers = (resolved.objective, resolved.mode, resolved.metric)
    except StudyError as error:
        answers = (spec.objective, spec.mode, spec.metric)
        notes = [str(error)]
    shown = report.questions[:PROMPTS_SHOWN]
    prompts, source = rendered_prompts(spec, shown) if shown else ([], "no questions")
    missing = set(report.missing_videos.values())
    found = sorted({q.video_path for q in report.questions} - missing)
    unreadable = probe_videos(found, progress=progress) if probe else {}
    return Preflight(spec, report, list(zip(shown, prompts, strict=True)), source, unreadable,
                     len(found) if probe else 0, answers, notes)
