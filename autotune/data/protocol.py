"""The multiple-choice protocol every dataset shares: questions, prompts, answer extraction, splits, accuracy.

Prompts follow lmms-eval's task definitions for each benchmark, as lmms-eval runs them for `--model llava_onevision`
(its `default` prompt profile), so that a number we report reads like theirs. Our code is our own; only the wording
is theirs. Prompt wording was read from EvolvingLMMs-Lab/lmms-eval (the v0.3 files below; lmms-eval 0.7.3 carries the
same default prompts for these three tasks):
  - tasks/videomme/utils.py `videomme_doc_to_text`; videomme.yaml `lmms_eval_specific_kwargs.default.post_prompt`.
  - tasks/mlvu/mlvu_dev.yaml and utils.py `mlvu_doc_to_text`.
  - tasks/longvideobench/longvideobench_val_v.yaml and utils.py `longvideobench_doc_to_text`.

Answers are read from the option letters' logits (`mode: logits`, the default) or from generated text (`mode:
generate`), whose letter comes from one of two extractions (`protocol` in a spec, named in `PROTOCOL_VERSION`):
  - `lmms-eval-0.7` (default): lmms-eval 0.7.3's rules exactly: `extract_mcq_answer` with choices A-D for Video-MME
    and MLVU (a ranking of formats: a leading or trailing lone letter, a letter after an answer phrase, "(X)", "X.",
    "X:", "X)", "X ", the last occurrence winning; else any occurrence of a choice letter), and LongVideoBench's
    first capital A-E after dropping its answer prefixes, else a random letter (`lmms_eval_answer`; the draw is
    seeded per question, and the engine records which questions it drew for). tests/autotune/fixtures holds 55-75
    outputs per dataset with the letters lmms-eval 0.7.3's own functions read from them.
  - `strict` (`extract_answer`): strips answer phrases, then takes a lone letter, then the first stand-alone valid
    letter that is not the article "A" ("A man ..."), never a letter inside a word or beyond the options, and
    returns None (counted wrong) where lmms-eval would guess. It reads "Dog" or "ABCD" as no answer where
    lmms-eval reads D, and differs from lmms-eval on 11 of the 55 Video-MME outputs of the fixture.
Video-MME's instruction names the letters "(A, B, C, or D)"; we name `letters(len(options))`, which is the same
text for Video-MME's four options and right for datasets (synthetic) with another count.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import random
import re
from collections.abc import Callable, Sequence
from typing import Any


# Bump the leading "adatp-mcq/N" whenever a prompt or the extraction rules change: cached answers and reported
# accuracies are only comparable under the same protocol.
def protocol_version(extraction: str = "lmms-eval-0.7") -> str:
    """The protocol a number was measured under: prompts, and how generated answers become letters."""
    if extraction not in EXTRACTIONS:
        raise ValueError(f"extraction must be one of {', '.join(EXTRACTIONS)}, got {extraction!r}")
    return f"adatp-mcq/2 (lmms-eval wording, default model profile; extraction: {extraction})"


EXTRACTIONS = ("lmms-eval-0.7", "strict")
PROTOCOL_VERSION = protocol_version()  # the default: lmms-eval 0.7.3's extraction

MAX_OPTIONS = 26


def letters(n: int) -> tuple[str, ...]:
    """The option letters for `n` options: letters(4) == ("A", "B", "C", "D")."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_OPTIONS:
        raise ValueError(f"number of options must be an int in [1, {MAX_OPTIONS}], got {n!r}")
    return tuple(chr(ord("A") + i) for i in range(n))


@dataclasses.dataclass(frozen=True)
class Question:
    """One question about one video: multiple-choice (options) or open-ended (no options), labelled or not.

    qid: unique within its dataset. video_path: absolute. options: option texts without letter prefixes, in
    the dataset's order; () for an open-ended question. answer: the correct option's letter ("A" for options[0]),
    the gold answer text of an open-ended question, or None when the table has no answers (tuned for fidelity to
    the unpruned model). meta: free-form grouping fields (duration group, task type, domain, ...); not part of
    equality or hashing. style: whose prompt wording and answer reading apply (videomme, mlvu, longvideobench;
    "" means `dataset`'s, and a dataset without its own wording gets Video-MME's).
    """

    qid: str
    dataset: str
    video_id: str
    video_path: str
    question: str
    options: tuple[str, ...]
    answer: str | None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict, hash=False, compare=False)
    style: str = dataclasses.field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.options, tuple) or not all(isinstance(o, str) for o in self.options):
            raise ValueError(f"question {self.qid}: options must be a tuple of str, got {self.options!r}")
        if len(self.options) == 1:
            raise ValueError(f"question {self.qid}: needs at least 2 options (or none: open-ended), got 1")
        if self.options and self.answer is not None and self.answer not in letters(len(self.options)):
            raise ValueError(f"question {self.qid}: answer {self.answer!r} is not one of {letters(len(self.options))}")
        if not self.options and self.answer is not None and not isinstance(self.answer, str):
            raise ValueError(f"question {self.qid}: an open-ended answer must be text, got {self.answer!r}")
        if not os.path.isabs(self.video_path):
            raise ValueError(f"question {self.qid}: video_path must be absolute, got {self.video_path!r}")

    @property
    def open_ended(self) -> bool:
        """No options: the answer is generated text."""
        return not self.options

    @property
    def labelled(self) -> bool:
        return self.answer is not None

    @property
    def answer_index(self) -> int:
        """Index of the correct option in `options`."""
        if not self.options or self.answer is None:
            raise ValueError(f"question {self.qid}: no correct option (open-ended or unlabelled)")
        return ord(self.answer) - ord("A")


class SkipRow(Exception):
    """Raised while parsing one annotation row that cannot become a Question; `reason` is what gets counted."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# ----------------------------------------------------------------------------------------------------------------
# Prompts: the user text that follows the video.

# Video-MME, lmms-eval `videomme_doc_to_text`: instruction, question, "A. text" lines, then the `default` profile's
# post_prompt, which begins with "\n" (hence the blank line). "and the subtitles" is lmms-eval's text even for the
# no-subtitle task; we keep it for parity.
_VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter ({letter_list}) of the correct option."
)
_VIDEOMME_POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
# MLVU dev, lmms-eval `mlvu_doc_to_text`: the dataset's question already carries "(A) text" lines; the trailing
# "(" primes the model to emit a bare letter.
_MLVU_POST_PROMPT = "\nOnly give the best option.\nBest option: ("
# LongVideoBench, lmms-eval `longvideobench_doc_to_text`: "A. text" lines, post_prompt on its own line, with a
# trailing newline.
_LONGVIDEOBENCH_POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"


def _letter_list(n: int) -> str:
    """The letters as a sentence names them: "A, B, C, or D" for 4, "A or B" for 2."""
    names = letters(n)
    if n == 2:
        return f"{names[0]} or {names[1]}"
    return ", ".join(names[:-1]) + f", or {names[-1]}"


def _dotted_options(options: Sequence[str]) -> str:
    return "\n".join(f"{letter}. {text}" for letter, text in zip(letters(len(options)), options, strict=True))


def _raw(q: Question) -> tuple[str, list[str]] | None:
    """The dataset's own question and option strings, when the adapter kept them (lmms-eval renders those)."""
    question, options = q.meta.get("raw_question"), q.meta.get("raw_options")
    if isinstance(question, str) and isinstance(options, list) and len(options) == len(q.options):
        return question, options
    return None


def _videomme_prompt(q: Question) -> str:
    instruction = _VIDEOMME_INSTRUCTION.format(letter_list=_letter_list(len(q.options)))
    raw = _raw(q) if style_of(q) == "videomme" else None
    if raw is not None:  # lmms-eval: the options exactly as stored, each already carrying its "A. " prefix
        return f"{instruction}\n{raw[0]}\n" + "\n".join(raw[1]) + f"\n{_VIDEOMME_POST_PROMPT}"
    return f"{instruction}\n{q.question}\n{_dotted_options(q.options)}\n{_VIDEOMME_POST_PROMPT}"


def _mlvu_prompt(q: Question) -> str:
    raw = _raw(q)
    if raw is not None:  # lmms-eval (sy1998/MLVU_dev): the stored question, its "(A) text" lines included, as is
        return f"{raw[0]}{_MLVU_POST_PROMPT}"
    options = "\n".join(f"({letter}) {text}" for letter, text in zip(letters(len(q.options)), q.options, strict=True))
    return f"{q.question}\n{options}{_MLVU_POST_PROMPT}"


def _longvideobench_prompt(q: Question) -> str:
    raw = _raw(q)
    if raw is not None:  # lmms-eval: "X. " + each kept option as stored
        return f"{raw[0]}\n{_dotted_options(raw[1])}\n{_LONGVIDEOBENCH_POST_PROMPT}"
    return f"{q.question}\n{_dotted_options(q.options)}\n{_LONGVIDEOBENCH_POST_PROMPT}"


PROMPTS: dict[str, Callable[[Question], str]] = {
    "videomme": _videomme_prompt,
    "mlvu": _mlvu_prompt,
    "longvideobench": _longvideobench_prompt,
    "synthetic": _videomme_prompt,
}


# Open-ended questions (no options): the question, then the short-answer instruction lmms-eval's open-ended video
# tasks use (e.g. ActivityNet-QA's default post_prompt).
OPEN_POST_PROMPT = "\nAnswer the question using a single word or phrase."


def style_of(question: Question) -> str:
    """Whose wording and answer reading a question follows: its `style`, else its dataset's name."""
    return question.style or question.dataset


def build_prompt(question: Question) -> str:
    """The user text that follows the video, in lmms-eval's wording for the question's style (`style_of`).

    Datasets without their own wording (synthetic, or one of your own) get Video-MME's; open-ended questions the
    question and OPEN_POST_PROMPT.
    """
    if question.open_ended:
        return f"{question.question}{OPEN_POST_PROMPT}"
    return PROMPTS.get(style_of(question), _videomme_prompt)(question)


# ----------------------------------------------------------------------------------------------------------------
# Answer extraction from generated text.

# Phrases models put before the letter ("The best answer is", "Answer:", "Best option: (", "Option B").
_ANSWER_PHRASE = re.compile(
    r"\b(?:the\s+)?(?:best|correct|right|final)?\s*(?:answer|option|choice)s?\b(?:\s+(?:is|would\s+be|should\s+be))?"
    r"\s*:?",
    re.IGNORECASE,
)
# The whole text is one letter, maybe wrapped: "B", "(B)", "B.", "C)", "**D**", "[A]".
_LONE_LETTER = re.compile(r"[\s(\[*`'\"]*([A-Za-z])[\s)\].:,*`'\"]*")
# A capital letter standing alone, not part of a word: "(C) red", "B. The man", "so C.".
_STANDALONE_LETTER = re.compile(r"(?<![A-Za-z0-9'])([A-Z])(?![A-Za-z0-9'])")
# "A man is ..." starts with the article, "A is correct" with the option.
_ARTICLE_A = re.compile(r"\s+(?!(?:is|was|seems|would|should|appears|fits)\b)[a-z]")
_FULLWIDTH = str.maketrans({"（": "(", "）": ")", "：": ":", "．": "."})


def _normalise_text(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_answer(text: str, n_options: int, options: Sequence[str] | None = None) -> str | None:
    """The option letter a model's generated `text` chooses, or None when it names no valid letter.

    lmms-eval-style: strips answer phrases ("The best answer is", "Answer:", "Best option:"), then takes a lone
    letter ("B", "(B)", "B."), else the first stand-alone capital letter among letters(n_options) that is not
    the article "A" ("A man ..."), else (when `options` texts are given) the one option whose text the answer
    repeats. Letters beyond n_options never count.
    """
    valid = letters(n_options)
    s = (text or "").translate(_FULLWIDTH).strip()
    if not s:
        return None
    for candidate in (s, _ANSWER_PHRASE.sub(" ", s).strip()):
        lone = _LONE_LETTER.fullmatch(candidate)
        if lone:
            letter = lone.group(1).upper()
            return letter if letter in valid else None
    stripped = _ANSWER_PHRASE.sub(" ", s)
    found = [m for m in _STANDALONE_LETTER.finditer(stripped) if m.group(1) in valid]
    for m in found:
        if not (m.group(1) == "A" and _ARTICLE_A.match(stripped, m.end())):
            return m.group(1)
    if options:
        said = _normalise_text(s)
        texts = [_normalise_text(o) for o in options]
        exact = [i for i, t in enumerate(texts) if t and t == said]
        contained = [i for i, t in enumerate(texts) if t and f" {t} " in f" {said} "]
        for hits in (exact, contained):
            if len(hits) == 1 and hits[0] < len(valid):
                return valid[hits[0]]
    return None


# ----------------------------------------------------------------------------------------------------------------
# lmms-eval 0.7.3's extraction, for parity (`extraction: lmms-eval-0.7`). Rules read from lmms-eval 0.7.3
# (`tasks/_task_utils/mcq_extract.py` `extract_mcq_answer`, used by Video-MME and MLVU with choices A-D;
# `tasks/longvideobench/utils.py` `parse_multi_choice_response`); the code is ours.

# Phrases after which lmms-eval looks for a letter (lower case; its list, its order).
_LMMS_PHRASES = (
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is",
    "best answer is", "the correct option is", "correct option is", "the best option is", "best option is",
    "the choice is", "choice is", "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
    "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
)
# Formats by confidence; within one, the candidate nearest the end wins.
_LMMS_RANK = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
              "space": 2, "fallback": 0}
_LVB_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer", "The best option is",
                 "The correct option is", "Best answer:", "Best option:")


def lmms_eval_mcq_letter(response: str, choices: Sequence[str]) -> str | None:
    """lmms-eval 0.7's `extract_mcq_answer`: the letter of `choices` in the most confident format (a leading or
    trailing lone letter, then after an answer phrase, then "(X)", "X.", "X:", "X)", "X "), the last such one; else
    any occurrence of a choice letter at all; None where there is none."""
    if not response or not response.strip():
        return None
    text = response.strip()
    for char in ",.!?;:'\"":  # one character at a time, in this order, as lmms-eval strips
        text = text.strip(char)
    padded = f" {text} "
    found: list[tuple[int, int, str]] = []  # (rank, position, letter)
    for name, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"), ("right_paren", "{})"),
                          ("space", "{} ")):
        found += [(_LMMS_RANK[name], padded.rfind(pattern.format(c)), c) for c in choices
                  if pattern.format(c) in padded]
    lower = padded.lower()
    for phrase in _LMMS_PHRASES:
        at = lower.find(phrase)
        if at >= 0:
            found += [(_LMMS_RANK["phrase"], padded.find(c, at + len(phrase)), c) for c in choices
                      if padded.find(c, at + len(phrase)) >= 0]
    bare = padded.strip()
    found += [(_LMMS_RANK["start"], 0, c) for c in choices
              if bare.startswith(c) and (len(bare) == 1 or not bare[1].isalpha())]
    found += [(_LMMS_RANK["end"], len(padded) - 1, c) for c in choices
              if bare.endswith(c) and (len(bare) == 1 or not bare[-2].isalpha())]
    if not found:
        found = [(_LMMS_RANK["fallback"], padded.rfind(c), c) for c in choices if c in padded]
    if not found:
        return None
    return max(found, key=lambda item: (item[0], item[1]))[2]


def lmms_eval_longvideobench_letter(response: str, n_options: int, draw: random.Random) -> tuple[str, bool]:
    """lmms-eval 0.7's LongVideoBench parser: drop its answer prefixes, take the first capital A-E anywhere; with
    none (or over 10 words and no A-E), a random valid letter from `draw`. Returns (letter, drawn at random)."""
    text = response.strip()
    for prefix in _LVB_PREFIXES:
        text = text.replace(prefix, "")
    match = re.search("[ABCDE]", text)
    if match is None:
        return draw.choice(letters(n_options)), True
    return match.group(0), False


def lmms_eval_answer(text: str, question: Question, seed: int = 0) -> tuple[str | None, bool]:
    """The letter lmms-eval 0.7.3 reads from `text` for `question`'s dataset, and whether it was drawn at random
    (LongVideoBench's fallback, seeded per question from `seed` and the qid, so reruns agree). Video-MME and MLVU
    use choices A-D as lmms-eval does; other datasets their own letters."""
    if style_of(question) == "longvideobench":
        digest = hashlib.sha256(f"{seed}|{question.qid}".encode()).digest()
        return lmms_eval_longvideobench_letter(text, len(question.options), random.Random(digest))
    choices = letters(4) if style_of(question) in ("videomme", "mlvu") else letters(len(question.options))
    return lmms_eval_mcq_letter(text, choices), False


# ----------------------------------------------------------------------------------------------------------------
# Splits and accuracy.


def split_by_video(
    questions: Sequence[Question], test_fraction: float = 0.5, seed: int = 0
) -> tuple[list[Question], list[Question]]:
    """Split into (tune, test) with every question of one video on the same side.

    round(test_fraction * n_videos) videos go to test, at least 1 and at most n_videos - 1 when there are >= 2
    videos (with one video, all goes to tune). Videos are ranked by a hash of (seed, video_id), so the split
    depends only on the set of video ids and the seed, not on the order of `questions`; each side keeps the
    input order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    videos = sorted({q.video_id for q in questions})

    def rank(video_id: str) -> str:
        return hashlib.sha256(f"{seed}\0{video_id}".encode()).hexdigest()

    n_test = round(test_fraction * len(videos))
    if len(videos) >= 2:
        n_test = min(max(n_test, 1), len(videos) - 1)
    else:
        n_test = 0
    test_videos = set(sorted(videos, key=rank)[:n_test])
    tune = [q for q in questions if q.video_id not in test_videos]
    test = [q for q in questions if q.video_id in test_videos]
    return tune, test


def _group_of(question: Question, key: str | Callable[[Question], Any]) -> Any:
    if callable(key):
        return key(question)
    if key in ("qid", "dataset", "video_id", "answer"):
        return getattr(question, key)
    return question.meta.get(key, "unknown")


def accuracy_by(
    questions: Sequence[Question], correct: Sequence[bool], key: str | Callable[[Question], Any]
) -> dict[Any, float]:
    """Accuracy in [0, 1] per group. `key` is a meta field ("task_type", "duration"), a Question field
    ("video_id", "dataset"), or a function of the question; questions without the meta field group as "unknown".
    Groups come out sorted by name."""
    if len(questions) != len(correct):
        raise ValueError(f"{len(questions)} questions but {len(correct)} correctness flags")
    hits: dict[Any, list[int]] = collections.defaultdict(lambda: [0, 0])
    for question, ok in zip(questions, correct, strict=True):
        group = hits[_group_of(question, key)]
        group[0] += float(ok)
        group[1] += 1
    return {name: hits[name][0] / hits[name][1] for name in sorted(hits, key=str)}


def micro_macro(
    questions: Sequence[Question], correct: Sequence[bool], key: str | Callable[[Question], Any] = "task_type"
) -> tuple[float, float]:
    """(micro, macro) accuracy: micro over all questions, macro the mean of the accuracies of the groups present.
    For MLVU as lmms-eval scores it (a missing task type counts as 0), use `benchmarks.mlvu_dev_score`."""
    if not questions:
        raise ValueError("no questions to score")
    per_group = accuracy_by(questions, correct, key)
    micro = sum(float(ok) for ok in correct) / len(correct)
    return micro, sum(per_group.values()) / len(per_group)
