"""The evaluation engine: one model per process, loaded once; a config is scored on a list of questions.

Multiple-choice answers come from the next-token logits of the option letters after the prompt (one prefill per
question, no decoding); `mode="generate"` decodes and extracts the letter lmms-eval-style, for parity checks.
The vision tower runs once per (model, video, frames): its output is cached (memory, then disk) and handed to
the model as `mm_encoder_outputs`, so a trial costs the pruned prefill and little else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
import torch
from transformers import AutoTokenizer

import adatp
from adatp.flops import flops_ratio, kept_count
from adatp.models import family_of
from adatp.video import (
    QWEN_FRAME_SIZE,
    LlavaOnevisionVideo,
    QwenVideo,
    VideoError,
    VideoFrontEnd,
    expand_video_placeholder,
    preprocess_config_from,
    qwen_preprocess_config_from,
)
from autotune.cache import FeatureCache, tensor_digest
from autotune.data.protocol import (
    PROTOCOL_VERSION,
    Question,
    build_prompt,
    extract_answer,
    letters,
    lmms_eval_answer,
    protocol_version,
)
from autotune.data.scoring import OPEN_METRICS, score_answer

# Bounds of the prefix cache (what one 7B prefix weighs: docs/performance.md, Trial cost).
PREFIX_MEMORY = 4 << 30
PREFIX_DISK = 40 << 30


def render_prompt(tokenizer, question: Question, template: str | None = None) -> str:
    """The full prompt text through the model's chat template: one user turn holding the video, then the text."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": build_prompt(question)}]}]
    if tokenizer is None:
        return jinja2.Template(template).render(messages=messages, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, question: Question, video_token_id: int, n_video_tokens: int) -> list[int]:
    """Token ids of the prompt with its one video placeholder expanded to `n_video_tokens` copies (LLaVA-OV)."""
    ids = tokenizer(render_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    return expand_video_placeholder(ids, video_token_id, n_video_tokens, question.qid)


@dataclasses.dataclass
class EvalResult:
    """One config on a list of questions. `predictions`: qid -> letter, or for open-ended questions the generated
    text (None: unanswered). `scores`: qid -> score in [0, 1] against the gold answer (1/0 for a letter; the engine's
    open-ended metric otherwise), for labelled questions; `correct`: qid -> score == 1. `accuracy`: mean score.

    flops_ratio: mean over questions of pruned / vanilla LM prefill FLOPs (text tokens included).
    kept_tokens: visual tokens kept per video. seconds: decode, vision, prefill (LM incl. selection), selection.
    skipped: qid -> reason for questions whose video could not be read.
    drawn: qids whose letter was drawn at random (generate mode, `lmms-eval-0.7` extraction, LongVideoBench's
        fallback when the text names no letter); the draw is seeded per question, so reruns agree.
    """

    correct: dict[str, bool]
    predictions: dict[str, str | None]
    accuracy: float
    scores: dict[str, float]
    flops_ratio: float
    kept_tokens: int
    visual_tokens: int
    seconds: dict[str, float]
    skipped: dict[str, str]
    protocol: str = PROTOCOL_VERSION
    drawn: list[str] = dataclasses.field(default_factory=list)


def load_model(model: str, dtype: str = "float32", attn_implementation: str = "sdpa",
               trust_remote_code: bool = False):
    """(model, tokenizer) through transformers' Auto classes; the model must be a family `adatp` supports."""
    from transformers import AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(
        model, dtype=getattr(torch, dtype), attn_implementation=attn_implementation,
        trust_remote_code=trust_remote_code,
    )
    family_of(loaded)  # a one-line TypeError naming the supported classes
    local = local_model_dir(model)
    tokenizer = _load_tokenizer(model, local, trust_remote_code)
    if tokenizer.chat_template is None and local is not None:
        tokenizer.chat_template = _saved_chat_template(local)
    return loaded, tokenizer


GENERIC_TOKENIZERS = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _load_tokenizer(model: str, local: Path | None, trust_remote_code: bool):
    """AutoTokenizer, except where the model's own tokenizer_config.json names the generic `tokenizers` backend:
    for some model types (Qwen3.5) AutoTokenizer prefers the type's tokenizer class, which re-reads a plain
    tokenizer.json (a word-level one, say) with its own pre-tokenizer and gives other ids."""
    declared = None
    if local is not None and (local / "tokenizer_config.json").is_file():
        try:
            declared = json.loads((local / "tokenizer_config.json").read_text(encoding="utf-8")).get("tokenizer_class")
        except (OSError, ValueError, AttributeError):
            declared = None
    if declared in GENERIC_TOKENIZERS:
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(local)
    return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)


def local_model_dir(model: str) -> Path | None:
    """The directory holding a model's files: the path itself, or a hub id's snapshot in the local Hugging Face
    cache (never downloads); None when neither is there."""
    if Path(model).is_dir():
        return Path(model)
    try:
        import huggingface_hub

        return Path(huggingface_hub.snapshot_download(model, local_files_only=True))
    except Exception:  # not cached, or not a valid repo id: the processor defaults apply
        return None


def _saved_chat_template(model_dir: Path) -> str | None:
    """The processor's chat template (Qwen-VL ships it beside the tokenizer, not inside it)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    saved = model_dir / "chat_template.json"
    return json.loads(saved.read_text()).get("chat_template") if saved.is_file() else None


class Engine:
    """Loads a supported Video LLM once; evaluates AdaTP configs (or the unpruned model) on questions.

    model: local directory or hub id (hub ids need a populated HF cache; nothing downloads offline).
    cache_dir: where vision features and vanilla answers persist (None: memory only).
    cuda_graphs: on CUDA, replay AdaTP's token selection from CUDA graphs (`adatp.enable(..., cuda_graphs=True)`).
        Off by default here (unlike `adatp.enable`): in batched trials it saved nothing measurable
        (docs/performance.md).
    frame_size: Qwen-VL only: [height, width] every frame is resized to first (see `ModelSpec.frame_size`).
    prefix_cache: run configs that allow it (`adatp.prefix.supports`) from a per-video prefix cache: layers < K
        over system prompt + video once per (video, prefix tokens, K), kept in memory (4 GiB LRU) and on disk
        (40 GiB, oldest first out) under cache_dir/prefixes; a video's vision features are dropped from the
        feature cache once its prefix is stored (the prefix holds what trials need).
    """

    def __init__(self, model: str, device: str = "cpu", dtype: str = "float32", attn_implementation: str = "sdpa",
                 frames: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 trust_remote_code: bool = False, cuda_graphs: bool = False,
                 frame_size: tuple[int, int] | None = None, prefix_cache: bool = True, mode: str = "logits",
                 extraction: str = "lmms-eval-0.7", metric: str = "letter", max_new_tokens: int = 16) -> None:
        if not (Path(model).is_dir() or "/" in model):
            raise FileNotFoundError(f"model {model!r}: not a local directory or a hub id")
        loaded, tokenizer = load_model(model, dtype, attn_implementation, trust_remote_code)
        family = family_of(loaded)
        local = local_model_dir(model)  # a hub id's cached snapshot holds the processor settings too
        read = preprocess_config_from if family == "llava_onevision" else qwen_preprocess_config_from
        preprocess = read(local) if local is not None else {}
        saved_frames = _saved_num_frames(str(local)) if local is not None else None
        self._attach(loaded, tokenizer, device, frames or saved_frames or 32, cache_dir, preprocess,
                     model_path=model, cuda_graphs=cuda_graphs, frame_size=frame_size, prefix_cache=prefix_cache,
                     mode=mode, extraction=extraction, metric=metric, max_new_tokens=max_new_tokens)

    @classmethod
    def from_model(cls, model, tokenizer, device: str = "cpu", frames: int = 32,
                   cache_dir: str | os.PathLike[str] | None = None, preprocess: dict | None = None,
                   cuda_graphs: bool = False, frame_size: tuple[int, int] | None = None,
                   prefix_cache: bool = True, mode: str = "logits", extraction: str = "lmms-eval-0.7",
                   metric: str = "letter", max_new_tokens: int = 16) -> Engine:
        """An engine around a model already in memory (e.g. built from config for a GPU benchmark)."""
        engine = cls.__new__(cls)
        engine._attach(model, tokenizer, device, frames, cache_dir, preprocess or {}, model_path="<in memory>",
                       cuda_graphs=cuda_graphs, frame_size=frame_size, prefix_cache=prefix_cache, mode=mode,
                       extraction=extraction, metric=metric, max_new_tokens=max_new_tokens)
        return engine

    def _attach(self, model, tokenizer, device: str, frames: int, cache_dir, preprocess: dict,
                model_path: str, cuda_graphs: bool, frame_size: tuple[int, int] | None,
                prefix_cache: bool = True, mode: str = "logits", extraction: str = "lmms-eval-0.7",
                metric: str = "letter", max_new_tokens: int = 16) -> None:
        if mode not in ("logits", "generate"):
            raise ValueError(f"mode must be 'logits' or 'generate', got {mode!r}")
        if metric != "letter" and metric not in OPEN_METRICS:
            raise ValueError(f"metric must be 'letter' or one of {', '.join(OPEN_METRICS)}, got {metric!r}")
        self.mode = mode
        self.metric = metric
        self.max_new_tokens = max_new_tokens
        self.extraction = extraction
        self.protocol = protocol_version(extraction)
        self.model_path = model_path
        self.cuda_graphs = cuda_graphs
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.frames = frames
        family = family_of(self.model)
        self.video = video_front_end(family, self.model, tokenizer, frames, preprocess, frame_size)
        self.family = family
        self.preprocess = preprocess
        self.n_visual = self.video.n_visual
        self.tokens_per_frame = self.video.tokens_per_frame
        self.video_token_id = self.model.config.video_token_id
        self.cache = FeatureCache(Path(cache_dir) / "features" if cache_dir else None,
                                  pin_memory=self.device.type == "cuda")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.prefix_cache = prefix_cache
        self.prefixes = FeatureCache(Path(cache_dir) / "prefixes" if cache_dir else None, memory_bytes=PREFIX_MEMORY,
                                     disk_bytes=PREFIX_DISK, pin_memory=self.device.type == "cuda")
        self.model_key = tensor_digest(self.video.weights())[:16]
        self.vision_calls = 0
        self.prefix_builds = 0
        self._prompts: dict[str, list[int]] = {}
        self._letter_ids = {letter: self.tokenizer.convert_tokens_to_ids(letter) for letter in letters(26)}

    @property
    def video_protocol(self) -> dict:
        """What fixes the visual tokens, recorded beside the protocol version (MLflow params, presets)."""
        return {"family": self.family, "frames": self.frames, **self.video.protocol()}

    # -- inputs ---------------------------------------------------------------------------------------------
    def _compute_features(self, video_path: str, seconds: dict[str, float]) -> torch.Tensor:
        start = time.perf_counter()
        pixels = self.video.pixels(video_path)
        seconds["decode"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            packed = self.video.encode(pixels, self.device)
        self.vision_calls += 1
        self.synchronize()
        seconds["vision"] += time.perf_counter() - start
        return packed

    def video_features(self, video_path: str, seconds: dict[str, float] | None = None) -> torch.Tensor:
        """LM-space features of a video (cached), packed as the family stores them: LLaVA-OV [F*N + 1, D];
        Qwen [1 + deepstack levels, T*N, D]. Raises VideoError for unreadable videos."""
        seconds = seconds if seconds is not None else _new_seconds()
        key = self.cache.video_key(self.model_key, video_path, self.frames)
        shape = self.video.feature_shape()
        return self.cache.get_or_compute(key, lambda: self._compute_features(video_path, seconds),
                                         valid=lambda tensor: tuple(tensor.shape) == shape
                                         and tensor.dtype.is_floating_point)

    def prompt_ids(self, question: Question) -> list[int]:
        """The token ids one question runs: its rendered prompt with the video placeholder expanded to the video's
        tokens (`n_visual` of them; the rest are text tokens). Cached per question."""
        if question.qid not in self._prompts:
            ids = self.tokenizer(render_prompt(self.tokenizer, question), add_special_tokens=False)["input_ids"]
            self._prompts[question.qid] = self.video.expand(ids, question.video_path, question.qid)
        return self._prompts[question.qid]

    def synchronize(self) -> None:
        """Wait for the engine's device to finish its queued work (a no-op on CPU): for timing."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, questions: Sequence[Question], config: adatp.AdaTPConfig | None = None,
                 batch_size: int = 8, mode: str | None = None, progress: bool = False,
                 before_batch: Callable[[], None] | None = None) -> EvalResult:
        """Score `config` (None: the unpruned model) on `questions`, reading answers in `mode` (None: the engine's).

        `before_batch` runs before each batch and may raise to stop (e.g. a deferred Ctrl-C) between batches.
        """
        mode = self.mode if mode is None else mode
        if mode not in ("logits", "generate"):
            raise ValueError(f"mode must be 'logits' or 'generate', got {mode!r}")
        seconds = _new_seconds()
        started = time.perf_counter()
        predictions: dict[str, str | None] = {}
        skipped: dict[str, str] = {}
        drawn: list[str] = []
        ratios: list[float] = []
        state = (adatp.enable(self.model, config, profile=True, cuda_graphs=self.cuda_graphs)
                 if config is not None else None)
        prefixed = (config is not None and mode == "logits" and self.prefix_cache
                    and adatp.prefix.supports(config, self.model))
        try:
            for batch in _with_progress(self._batches(questions, batch_size, by_prefix=prefixed), progress):
                if before_batch is not None:
                    before_batch()
                ready, answers = self._run_batch(batch, config, mode, prefixed, seconds, skipped, drawn)
                predictions.update(zip([q.qid for q in ready], answers, strict=True))
                ratios += self._flops_ratios(ready, config)
        finally:
            if state is not None:
                seconds["selection"] = state.selection_seconds
                adatp.disable(self.model)
        seconds["total"] = time.perf_counter() - started
        return self._result(questions, config, predictions, ratios, seconds, skipped, drawn)

    def _run_batch(self, batch: list[Question], config: adatp.AdaTPConfig | None, mode: str, prefixed: bool,
                   seconds: dict[str, float], skipped: dict[str, str],
                   drawn: list[str]) -> tuple[list[Question], list[str | None]]:
        """(the batch's questions that ran, their answers); those whose video cannot be read go to `skipped`."""
        if prefixed:
            try:
                prefix = self.prefix(batch[0], config.prune_layer, seconds)
            except (VideoError, OSError) as error:
                skipped.update({question.qid: _skip_reason(error) for question in batch})
                return [], []
            return batch, self._answer_from_prefix(batch, prefix, seconds)
        ready, features = self._batch_features(batch, seconds, skipped)
        if not ready:
            return [], []
        return ready, self._answer(ready, features, mode, seconds, drawn)

    def _batch_features(self, batch: list[Question], seconds: dict[str, float],
                        skipped: dict[str, str]) -> tuple[list[Question], list[torch.Tensor]]:
        """(questions whose video reads, their video features); the others go to `skipped` with the reason."""
        ready, features = [], []
        for question in batch:
            try:
                features.append(self.video_features(question.video_path, seconds))
                ready.append(question)
            except (VideoError, OSError) as error:
                skipped[question.qid] = _skip_reason(error)
        return ready, features

    def _flops_ratios(self, questions: list[Question], config: adatp.AdaTPConfig | None) -> list[float]:
        """Each question's pruned / vanilla LM prefill FLOPs (1.0 unpruned)."""
        ratios = []
        for question in questions:
            n_text = len(self.prompt_ids(question)) - self.n_visual
            ratios.append(1.0 if config is None else flops_ratio(
                self.model.config.text_config, self.n_visual, n_text, config.retention, config.prune_layer))
        return ratios

    def _result(self, questions: Sequence[Question], config: adatp.AdaTPConfig | None,
                predictions: dict[str, str | None], ratios: list[float], seconds: dict[str, float],
                skipped: dict[str, str], drawn: list[str]) -> EvalResult:
        """The answers scored against the labelled questions' gold answers."""
        by_qid = {q.qid: q for q in questions}
        scores = {qid: score_answer(by_qid[qid], answer, by_qid[qid].answer, self.metric)
                  for qid, answer in predictions.items() if by_qid[qid].labelled}
        return EvalResult(
            correct={qid: score == 1.0 for qid, score in scores.items()},
            predictions=predictions,
            accuracy=sum(scores.values()) / len(scores) if scores else 0.0,
            scores=scores,
            flops_ratio=sum(ratios) / len(ratios) if ratios else 1.0,
            kept_tokens=self.n_visual if config is None else kept_count(self.n_visual, config.retention),
            visual_tokens=self.n_visual,
            seconds=seconds,
            skipped=skipped,
            protocol=self.protocol,
            drawn=drawn,
        )

    def prefix_length(self, question: Question) -> int:
        """Where the question's prompt leaves its prefix: the index after its last video token."""
        ids = self.prompt_ids(question)
        return len(ids) - ids[::-1].index(self.video_token_id)

    def _batches(self, questions: Sequence[Question], batch_size: int, by_prefix: bool) -> list[list[Question]]:
        """Batches in order; with `by_prefix`, the questions sharing a prefix (video and the tokens before and with
        it) batched together, so one cached prefix serves the whole batch."""
        if not by_prefix:
            return [list(questions[start : start + batch_size]) for start in range(0, len(questions), batch_size)]
        groups: dict[tuple, list[Question]] = {}
        for question in questions:
            groups.setdefault((question.video_path, tuple(self.prompt_ids(question)[: self.prefix_length(question)])),
                              []).append(question)
        return [group[start : start + batch_size] for group in groups.values()
                for start in range(0, len(group), batch_size)]

    def prefix(self, question: Question, prune_layer: int, seconds: dict[str, float] | None = None) -> adatp.Prefix:
        """The cached prefix of the question's video (built once: the first trial that needs it pays); `seconds`
        accumulates the time spent building it, by stage."""
        seconds = seconds if seconds is not None else _new_seconds()
        prefix_ids = self.prompt_ids(question)[: self.prefix_length(question)]
        video_key = self.cache.video_key(self.model_key, question.video_path, self.frames)
        digest = hashlib.sha256(json.dumps(prefix_ids).encode()).hexdigest()[:16]
        key = hashlib.sha256(f"{video_key}|{digest}|{prune_layer}|{self.model.dtype}|prefix-v1".encode()).hexdigest()
        width = self.model.config.text_config.hidden_size

        def valid(tensors) -> bool:
            return (isinstance(tensors, dict) and {"keys", "values", "hidden", "rope", "video_columns",
                                                    "frame_features", "next_rope"} <= set(tensors)
                    and tensors["keys"].shape[0] == prune_layer
                    and tuple(tensors["hidden"].shape) == (len(prefix_ids), width)
                    and tensors["hidden"].dtype == self.model.dtype
                    and tensors["video_columns"].numel() == self.n_visual)

        stored = self.prefixes.get(key, valid=valid)
        if stored is not None:
            return adatp.Prefix.from_tensors(stored).to(self.device)
        features = self.video_features(question.video_path, seconds)
        start = time.perf_counter()
        input_ids = torch.tensor([prefix_ids], device=self.device)
        inputs = self.video.model_inputs(input_ids, [features.to(self.device, self.model.dtype)])
        prefix = adatp.encode_prefix(self.model, input_ids=input_ids, **inputs)
        self.synchronize()
        seconds["prefix"] += time.perf_counter() - start
        self.prefixes.put(key, prefix.tensors())
        self.prefix_builds += 1
        self.cache.delete(video_key)  # trials of this video need the prefix only now
        return prefix

    def _answer_from_prefix(self, questions: list[Question], prefix: adatp.Prefix,
                            seconds: dict[str, float]) -> list[str | None]:
        input_ids, mask = self._left_padded([self.prompt_ids(q)[self.prefix_length(q) :] for q in questions])
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        start = time.perf_counter()
        with torch.no_grad(), adatp.use_prefix(self.model, prefix):
            logits = self.model(input_ids=input_ids, attention_mask=mask,
                                position_ids=adatp.suffix_position_ids(prefix, mask), logits_to_keep=1,
                                use_cache=False).logits[:, -1].float()
        answers = self._letters(logits, questions)
        self.synchronize()
        seconds["prefill"] += time.perf_counter() - start
        return answers

    def _letters(self, logits: torch.Tensor, questions: list[Question]) -> list[str]:
        """Each row's answer: the option letter with the highest next-token logit."""
        answers = []
        for row, question in enumerate(questions):
            options = letters(len(question.options))
            ids = torch.tensor([self._letter_ids[letter] for letter in options], device=logits.device)
            answers.append(options[int(logits[row, ids].argmax())])
        return answers

    def _left_padded(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token rows -> (input_ids, attention_mask) [B, longest], padded on the left (the last token lines up)."""
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        return input_ids, mask

    def batch_inputs(self, questions: list[Question], features: list[torch.Tensor]) -> dict:
        """The model's keyword inputs for one left-padded batch of questions, given each one's video features."""
        input_ids, mask = self._left_padded([self.prompt_ids(q) for q in questions])
        # Copied one by one from (pinned) host memory to the device: no host-side stack of the batch.
        on_device = [f.to(self.device, self.model.dtype, non_blocking=True) for f in features]
        input_ids = input_ids.to(self.device)
        return dict(input_ids=input_ids, attention_mask=mask.to(self.device),
                    **self.video.model_inputs(input_ids, on_device))

    def _answer(self, questions: list[Question], features: list[torch.Tensor], mode: str,
                seconds: dict[str, float], drawn: list[str]) -> list[str | None]:
        inputs = self.batch_inputs(questions, features)
        start = time.perf_counter()
        with torch.no_grad():
            if mode == "logits":
                logits = self.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1].float()
                answers = self._letters(logits, questions)
            else:
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                             pad_token_id=self.tokenizer.pad_token_id)
                texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :],
                                                    skip_special_tokens=True)
                answers = [self._extract(text, q, drawn) for text, q in zip(texts, questions, strict=True)]
        self.synchronize()
        seconds["prefill"] += time.perf_counter() - start
        return answers

    def _extract(self, text: str, question: Question, drawn: list[str]) -> str | None:
        """The letter a generated text names, under the engine's extraction rules; an open-ended question's answer is
        the text itself (stripped; None when empty)."""
        if question.open_ended:
            return text.strip() or None
        if self.extraction == "strict":
            return extract_answer(text, len(question.options))
        letter, random_draw = lmms_eval_answer(text, question)
        if random_draw:
            drawn.append(question.qid)
        return letter

    def vanilla_predictions(self, questions: Sequence[Question], dataset_key: str, batch_size: int = 8,
                            progress: bool = False) -> dict[str, str | None]:
        """The unpruned model's letters (or open-ended answers), computed once per (model, dataset, protocol, mode)
        and cached on disk."""
        settings = json.dumps(self.video_protocol, sort_keys=True)
        answering = self.mode if self.mode == "logits" else f"{self.mode}|{self.max_new_tokens}"
        digest = hashlib.sha256(f"{self.model_key}|{dataset_key}|{self.protocol}|{answering}|{settings}".encode())
        path = self.cache_dir / "vanilla" / f"{digest.hexdigest()[:24]}.json" if self.cache_dir else None
        known = _read_answers(path) if path else {}
        missing = [q for q in questions if q.qid not in known]
        if missing:
            known.update(self.evaluate(missing, None, batch_size, progress=progress).predictions)
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_suffix(f".{os.getpid()}.tmp")  # written whole, then renamed: never half a file
                partial.write_text(json.dumps(known, sort_keys=True))
                os.replace(partial, path)
        return {q.qid: known.get(q.qid) for q in questions}


def _read_answers(path: Path) -> dict[str, str | None]:
    """A vanilla-answers file; a torn or foreign one counts as empty (the answers are recomputed and rewritten)."""
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict) or not all(isinstance(k, str) and (v is None or isinstance(v, str))
                                              for k, v in known.items()):
        return {}
    return known


def video_front_end(family: str, model, tokenizer, frames: int, preprocess: dict,
                    frame_size: tuple[int, int] | None) -> VideoFrontEnd:
    """The adatp.video front-end of a loaded model's family; `frame_size`: Qwen-VL only (None: QWEN_FRAME_SIZE)."""
    if family == "llava_onevision":
        if frame_size is not None:
            raise ValueError("model.frame_size: LLaVA-OneVision resizes every frame to its vision tower's input; "
                             "frame_size applies to Qwen-VL models only")
        return LlavaOnevisionVideo(model, frames, preprocess)
    return QwenVideo(model, tokenizer, frames, preprocess, frame_size or QWEN_FRAME_SIZE,
                     timestamps=family in ("qwen3_vl", "qwen3_5", "qwen3_5_moe"))


def _with_progress(batches: list[list[Question]], progress: bool):
    """The batches, under a tqdm bar when `progress`."""
    if not progress:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc="questions", unit="batch", leave=False)


def _skip_reason(error: BaseException) -> str:
    """Why a question was skipped: the error's first line, else its type."""
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _new_seconds() -> dict[str, float]:
    return {"decode": 0.0, "vision": 0.0, "prefix": 0.0, "prefill": 0.0, "selection": 0.0}


def _saved_num_frames(model: str) -> int | None:
    """`num_frames` from a local model's video_preprocessor_config.json, if it records one."""
    path = Path(model) / "video_preprocessor_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("num_frames")
        return int(value) if value else None
    return None
