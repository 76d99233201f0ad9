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
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
import torch
from transformers import AutoTokenizer, LlavaOnevisionForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling

import adatp
from adatp.flops import flops_ratio, kept_count
from adatp.video import VideoError, decode_frames, preprocess_config_from, preprocess_frames
from autotune.cache import FeatureCache, tensor_digest
from autotune.data.protocol import PROTOCOL_VERSION, Question, build_prompt, extract_answer, letters


def render_prompt(tokenizer, question: Question, template: str | None = None) -> str:
    """The full prompt text through the model's chat template: one user turn holding the video, then the text."""
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": build_prompt(question)}]}]
    if tokenizer is None:
        return jinja2.Template(template).render(messages=messages, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prompt_ids(tokenizer, question: Question, video_token_id: int, n_video_tokens: int) -> list[int]:
    """Token ids of the prompt with its one video placeholder expanded to the video's F*N + 1 tokens."""
    ids = tokenizer(render_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
    if ids.count(video_token_id) != 1:
        raise ValueError(f"question {question.qid}: the chat template must render exactly one video placeholder")
    at = ids.index(video_token_id)
    return ids[:at] + [video_token_id] * n_video_tokens + ids[at + 1 :]


@dataclasses.dataclass
class EvalResult:
    """One config on a list of questions. `correct`/`predictions` map qid -> bool / letter (None: unanswered).

    flops_ratio: mean over questions of pruned / vanilla LM prefill FLOPs (text tokens included).
    kept_tokens: visual tokens kept per video. seconds: decode, vision, prefill (LM incl. selection), selection.
    skipped: qid -> reason for questions whose video could not be read.
    """

    correct: dict[str, bool]
    predictions: dict[str, str | None]
    accuracy: float
    flops_ratio: float
    kept_tokens: int
    visual_tokens: int
    seconds: dict[str, float]
    skipped: dict[str, str]
    protocol: str = PROTOCOL_VERSION


class Engine:
    """Loads a LLaVA-OneVision once; evaluates AdaTP configs (or the unpruned model) on questions.

    model: local directory or hub id (hub ids need a populated HF cache; nothing downloads offline).
    cache_dir: where vision features and vanilla answers persist (None: memory only).
    cuda_graphs: on CUDA, replay AdaTP's token selection from CUDA graphs (`adatp.enable(..., cuda_graphs=True)`).
    """

    def __init__(self, model: str, device: str = "cpu", dtype: str = "float32", attn_implementation: str = "sdpa",
                 frames: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 trust_remote_code: bool = False, cuda_graphs: bool = False) -> None:
        if not (Path(model).is_dir() or "/" in model):
            raise FileNotFoundError(f"model {model!r}: not a local directory or a hub id")
        loaded = LlavaOnevisionForConditionalGeneration.from_pretrained(
            model, dtype=getattr(torch, dtype), attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
        )
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        preprocess = preprocess_config_from(model) if Path(model).is_dir() else {}
        self._attach(loaded, tokenizer, device, frames or _saved_num_frames(model) or 32, cache_dir, preprocess,
                     model_path=model, cuda_graphs=cuda_graphs)

    @classmethod
    def from_model(cls, model: LlavaOnevisionForConditionalGeneration, tokenizer, device: str = "cpu",
                   frames: int = 32, cache_dir: str | os.PathLike[str] | None = None,
                   preprocess: dict | None = None, cuda_graphs: bool = False) -> Engine:
        """An engine around a model already in memory (e.g. built from config for a GPU benchmark)."""
        engine = cls.__new__(cls)
        engine._attach(model, tokenizer, device, frames, cache_dir, preprocess or {}, model_path="<in memory>",
                       cuda_graphs=cuda_graphs)
        return engine

    def _attach(self, model, tokenizer, device: str, frames: int, cache_dir, preprocess: dict,
                model_path: str, cuda_graphs: bool) -> None:
        self.model_path = model_path
        self.cuda_graphs = cuda_graphs
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        self.preprocess = preprocess
        self.frames = frames
        vision = self.model.config.vision_config
        self.tokens_per_frame = math.ceil(vision.image_size // vision.patch_size / 2) ** 2
        self.n_visual = self.frames * self.tokens_per_frame
        self.video_token_id = self.model.config.video_token_id
        self.cache = FeatureCache(Path(cache_dir) / "features" if cache_dir else None,
                                  pin_memory=self.device.type == "cuda")
        self.cache_dir = Path(cache_dir) if cache_dir else None
        inner = self.model.model
        weights = [*inner.vision_tower.parameters(), *inner.multi_modal_projector.parameters(), inner.image_newline]
        self.model_key = tensor_digest(weights)[:16]
        self.vision_calls = 0
        self._prompts: dict[str, list[int]] = {}
        self._letter_ids = {letter: self.tokenizer.convert_tokens_to_ids(letter) for letter in letters(26)}

    # -- inputs ---------------------------------------------------------------------------------------------
    def _compute_features(self, video_path: str, seconds: dict[str, float]) -> torch.Tensor:
        start = time.perf_counter()
        frames = decode_frames(video_path, self.frames)
        pixels = preprocess_frames(frames, **self.preprocess)
        seconds["decode"] += time.perf_counter() - start
        start = time.perf_counter()
        with torch.no_grad():
            output = self.model.model.get_video_features(
                pixels[None].to(self.device, self.model.dtype),
                vision_feature_layer=self.model.config.vision_feature_layer,
                vision_feature_select_strategy=self.model.config.vision_feature_select_strategy,
            )
        self.vision_calls += 1
        self._sync()
        seconds["vision"] += time.perf_counter() - start
        return output.pooler_output[0]

    def video_features(self, video_path: str, seconds: dict[str, float] | None = None) -> torch.Tensor:
        """[F*N + 1, D] LM-space features of a video (cached); raises VideoError for unreadable videos."""
        seconds = seconds if seconds is not None else _new_seconds()
        key = self.cache.video_key(self.model_key, video_path, self.frames)
        return self.cache.get_or_compute(key, lambda: self._compute_features(video_path, seconds))

    def _prompt(self, question: Question) -> list[int]:
        if question.qid not in self._prompts:
            self._prompts[question.qid] = prompt_ids(self.tokenizer, question, self.video_token_id, self.n_visual + 1)
        return self._prompts[question.qid]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- evaluation -----------------------------------------------------------------------------------------
    def evaluate(self, questions: Sequence[Question], config: adatp.AdaTPConfig | None = None,
                 batch_size: int = 8, mode: str = "logits", progress: bool = False,
                 before_batch: Callable[[], None] | None = None) -> EvalResult:
        """Score `config` (None: the unpruned model) on `questions`.

        `before_batch` runs before each batch and may raise to stop (e.g. a deferred Ctrl-C) between batches.
        """
        if mode not in ("logits", "generate"):
            raise ValueError(f"mode must be 'logits' or 'generate', got {mode!r}")
        seconds = _new_seconds()
        started = time.perf_counter()
        predictions: dict[str, str | None] = {}
        skipped: dict[str, str] = {}
        ratios: list[float] = []
        state = (adatp.enable(self.model, config, profile=True, cuda_graphs=self.cuda_graphs)
                 if config is not None else None)
        try:
            batches = range(0, len(questions), batch_size)
            if progress:
                from tqdm import tqdm

                batches = tqdm(batches, desc="questions", unit="batch", leave=False)
            for start in batches:
                if before_batch is not None:
                    before_batch()
                ready, features = [], []
                for question in questions[start : start + batch_size]:
                    try:
                        features.append(self.video_features(question.video_path, seconds))
                        ready.append(question)
                    except (VideoError, OSError) as error:
                        skipped[question.qid] = str(error).splitlines()[0] if str(error) else type(error).__name__
                if not ready:
                    continue
                answers = self._answer(ready, features, mode, seconds)
                predictions.update(zip([q.qid for q in ready], answers, strict=True))
                for question in ready:
                    n_text = len(self._prompt(question)) - self.n_visual
                    ratios.append(1.0 if config is None else flops_ratio(
                        self.model.config.text_config, self.n_visual, n_text, config.retention, config.prune_layer))
        finally:
            if state is not None:
                seconds["selection"] = state.selection_seconds
                adatp.disable(self.model)
        seconds["total"] = time.perf_counter() - started
        by_qid = {q.qid: q for q in questions}
        correct = {qid: letter == by_qid[qid].answer for qid, letter in predictions.items()}
        return EvalResult(
            correct=correct,
            predictions=predictions,
            accuracy=sum(correct.values()) / len(correct) if correct else 0.0,
            flops_ratio=sum(ratios) / len(ratios) if ratios else 1.0,
            kept_tokens=self.n_visual if config is None else kept_count(self.n_visual, config.retention),
            visual_tokens=self.n_visual,
            seconds=seconds,
            skipped=skipped,
        )

    def _batch_inputs(self, questions: list[Question], features: list[torch.Tensor]) -> dict:
        encoded = [self._prompt(q) for q in questions]
        width = max(map(len, encoded))
        input_ids = torch.full((len(encoded), width), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros(len(encoded), width, dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            mask[row, width - len(ids) :] = 1
        # Copied one by one from (pinned) host memory and stacked on the device: no host-side stack of the batch.
        video = torch.stack([f.to(self.device, self.model.dtype, non_blocking=True) for f in features])
        return dict(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                    mm_encoder_outputs={"video": BaseModelOutputWithPooling(pooler_output=video)})

    def _answer(self, questions: list[Question], features: list[torch.Tensor], mode: str,
                seconds: dict[str, float]) -> list[str | None]:
        inputs = self._batch_inputs(questions, features)
        start = time.perf_counter()
        with torch.no_grad():
            if mode == "logits":
                logits = self.model(**inputs, logits_to_keep=1, use_cache=False).logits[:, -1].float()
                answers = []
                for row, question in enumerate(questions):
                    options = letters(len(question.options))
                    ids = torch.tensor([self._letter_ids[letter] for letter in options], device=logits.device)
                    answers.append(options[int(logits[row, ids].argmax())])
            else:
                output = self.model.generate(**inputs, max_new_tokens=16, do_sample=False,
                                             pad_token_id=self.tokenizer.pad_token_id)
                texts = self.tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :],
                                                    skip_special_tokens=True)
                answers = [extract_answer(text, len(q.options)) for text, q in zip(texts, questions, strict=True)]
        self._sync()
        seconds["prefill"] += time.perf_counter() - start
        return answers

    def vanilla_predictions(self, questions: Sequence[Question], dataset_key: str, batch_size: int = 8,
                            progress: bool = False) -> dict[str, str | None]:
        """The unpruned model's letters, computed once per (model, dataset, protocol) and cached on disk."""
        digest = hashlib.sha256(f"{self.model_key}|{dataset_key}|{PROTOCOL_VERSION}|{self.frames}".encode())
        path = self.cache_dir / "vanilla" / f"{digest.hexdigest()[:24]}.json" if self.cache_dir else None
        known: dict[str, str | None] = json.loads(path.read_text()) if path and path.exists() else {}
        missing = [q for q in questions if q.qid not in known]
        if missing:
            known.update(self.evaluate(missing, None, batch_size, progress=progress).predictions)
            if path:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(known, sort_keys=True))
        return {q.qid: known.get(q.qid) for q in questions}


def _new_seconds() -> dict[str, float]:
    return {"decode": 0.0, "vision": 0.0, "prefill": 0.0, "selection": 0.0}


def _saved_num_frames(model: str) -> int | None:
    """`num_frames` from a local model's video_preprocessor_config.json, if it records one."""
    path = Path(model) / "video_preprocessor_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("num_frames")
        return int(value) if value else None
    return None
