"""The demos' tiny Video LLMs: a word-level tokenizer trained with `tokenizers`, a model built from config (a
LLaVA-OneVision, a Qwen2.5-VL, or a hybrid Qwen3.5), trained on the synthetic video-QA task on CPU, saved with
`save_pretrained` and loaded by the engine with `from_pretrained` like any hub model.

Reproduce the shipped checkpoints with:
    python -m autotune.tinymodel --out assets/tiny-llava-ov-synthetic
    python -m autotune.tinymodel --family qwen2_5_vl --out assets/tiny-qwen2.5-vl-synthetic
    python -m autotune.tinymodel --family qwen3_5 --steps 4000 --out assets/tiny-qwen3.5-synthetic
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
)

from adatp.video import (
    decode_frames,
    frame_indices,
    preprocess_frames,
    qwen3_timestamp_text,
    qwen3_timestamps,
    video_fps_and_length,
)
from autotune.data import synthetic
from autotune.data.protocol import Question

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_DIR = ASSETS / "tiny-llava-ov-synthetic"
QWEN_DIR = ASSETS / "tiny-qwen2.5-vl-synthetic"
QWEN3_5_DIR = ASSETS / "tiny-qwen3.5-synthetic"
FAMILIES = {"llava_onevision": DEFAULT_DIR, "qwen2_5_vl": QWEN_DIR, "qwen3_5": QWEN3_5_DIR}
# The tiny Qwen3.5's LM: Gated DeltaNet layers with full attention every 4th, as in the released models, and 9 layers
# so that in-LLM pruning can follow either full-attention layer (K = 4 or K = 8).
QWEN3_5_LAYERS = ["linear_attention"] * 3 + ["full_attention"] + ["linear_attention"] * 3 + ["full_attention"] + [
    "linear_attention"]
SPECIAL_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "<video>", "<image>"]
QWEN_SPECIAL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|image_pad|>"]
IMAGE_SIZE, PATCH_SIZE, FRAMES = 32, 4, 16
# Qwen-style chat template with LLaVA-OV's content items: a video item renders as one <video> placeholder.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}<video>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The same with Qwen-VL's video item: <|vision_start|><|video_pad|><|vision_end|>, expanded by the engine.
QWEN_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<video>\n", "<|vision_start|><|video_pad|><|vision_end|>\n")
# The tiny Qwen's processor settings: 32 x 32 frames stay 32 x 32 (8 x 8 patches of 4 px -> 4 x 4 tokens per group).
QWEN_PREPROCESS = dict(size={"shortest_edge": 256, "longest_edge": 4096}, patch_size=PATCH_SIZE, temporal_patch_size=2,
                       merge_size=2, image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711], resample=3, rescale_factor=1 / 255,
                       num_frames=FRAMES)
# Qwen3.5 reads them with Qwen3-VL's processor, which bounds the whole clip's pixels: 16 frames of 32 x 32 need 16384.
QWEN3_5_PREPROCESS = {**QWEN_PREPROCESS, "size": {"shortest_edge": 256, "longest_edge": FRAMES * IMAGE_SIZE**2}}


def train_tokenizer(corpus: list[str], family: str = "llava_onevision") -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the prompts' words (every option letter is its own token)."""
    qwen = family in ("qwen2_5_vl", "qwen3_5")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    # Option letters and role names are ordinary words (special tokens would vanish from decoded answers), and so
    # are the pieces of Qwen3.5's timestamp text ("<1.5 seconds>": "<", "1", ".", "5", "seconds", ">").
    words = " ".join([chr(ord("A") + i) for i in range(26)] + ["user", "assistant", "system"]
                     + (list("0123456789.<>") + ["seconds"] if family == "qwen3_5" else []))
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS + (QWEN_SPECIAL_TOKENS if qwen else []))
    tokenizer.train_from_iterator([*corpus, words], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<video>", "<image>"] + (QWEN_SPECIAL_TOKENS if qwen else []),
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE if qwen else CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlavaOnevisionForConditionalGeneration:
    vocab = (max(tokenizer.get_vocab().values()) + 1 + 7) // 8 * 8  # the trainer's ids can have gaps
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
                           patch_size=PATCH_SIZE, vision_use_head=False),
        text_config=dict(model_type="qwen2", hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
                         max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    )
    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration(config)


def _qwen_vocab_and_ids(tokenizer: PreTrainedTokenizerFast) -> tuple[int, dict[str, int]]:
    """The vocabulary size (rounded up to 8) and the Qwen-VL special token ids of a trained tokenizer."""
    vocab = (max(tokenizer.get_vocab().values()) + 1 + 7) // 8 * 8
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("video_token_id", "<|video_pad|>"), ("image_token_id", "<|image_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    return vocab, ids


def build_qwen_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """A tiny Qwen2.5-VL: one attention window covering the whole 8 x 8 patch grid (so the tower's window order is
    the identity), M-RoPE sections in the real model's 2:3:3 ratio."""
    vocab, ids = _qwen_vocab_and_ids(tokenizer)
    config = Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=PATCH_SIZE,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=IMAGE_SIZE,
                           fullatt_block_indexes=[0, 1], out_hidden_size=128, tokens_per_second=2),
        text_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=2048,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 6, 6]}),
        tie_word_embeddings=True, **ids,
    )
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config)


def build_qwen3_5_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> Qwen3_5ForConditionalGeneration:
    """A tiny Qwen3.5: 9 LM layers (`QWEN3_5_LAYERS`), a gated q_proj and partial rotary (half of head_dim 32) with
    interleaved M-RoPE, as in the released models; the vision tower's learned position grid covers the 8 x 8
    patches."""
    vocab, ids = _qwen_vocab_and_ids(tokenizer)
    config = Qwen3_5Config(
        vision_config=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=PATCH_SIZE,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=128,
                           num_position_embeddings=(IMAGE_SIZE // PATCH_SIZE) ** 2),
        text_config=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=len(QWEN3_5_LAYERS),
                         layer_types=QWEN3_5_LAYERS, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                         linear_conv_kernel_dim=4, linear_key_head_dim=32, linear_value_head_dim=32,
                         linear_num_key_heads=2, linear_num_value_heads=4, vocab_size=vocab,
                         max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e4, "mrope_section": [4, 2, 2],
                                          "mrope_interleaved": True, "partial_rotary_factor": 0.5}),
        tie_word_embeddings=True, **ids,
    )
    torch.manual_seed(seed)
    return Qwen3_5ForConditionalGeneration(config)


def _tower_outputs(model, questions: list[Question], frames: int) -> dict[str, torch.Tensor]:
    """Frozen vision-tower hidden states [F, patches, Dv] per video (the tower is not trained: a random SigLIP
    keeps each patch's colour, and freezing it lets training run the tower once per video)."""
    tensors = {}
    with torch.no_grad():
        for question in questions:
            if question.video_id not in tensors:
                pixels = preprocess_frames(decode_frames(question.video_path, frames), size=(IMAGE_SIZE, IMAGE_SIZE))
                output = model.model.vision_tower(pixels, output_hidden_states=True)
                tensors[question.video_id] = output.hidden_states[model.config.vision_feature_layer]
    return tensors


def _video_features(model, tower: torch.Tensor) -> torch.Tensor:
    """What LlavaOnevisionModel.get_video_features does after the tower: projector, 2x2 pooling, image_newline.
    tower: [B, F, patches, Dv] -> [B, F*N + 1, D]."""
    batch, frames = tower.shape[:2]
    inner = model.model
    projected = inner.apply_pooling(inner.multi_modal_projector(tower.flatten(0, 1)))
    projected = projected.reshape(batch, -1, projected.shape[-1])
    return torch.cat([projected, inner.image_newline[None, None].expand(batch, 1, -1)], dim=1)


OPEN_QUESTION = "{question} Answer with one word."


def _open_question(question: Question) -> Question:
    """The same question without options, answered by the kind word: an auxiliary training format for the
    visual binding (which object, which texture) beside the MCQ format."""
    return dataclasses.replace(question, options=("x", "y"), answer="A", dataset="synthetic-open",
                               question=OPEN_QUESTION.format(question=question.question))


@dataclasses.dataclass
class _Recipe:
    """What the training loop needs from a model family."""

    model: torch.nn.Module
    tower: dict[str, torch.Tensor]  # video_id -> frozen vision-tower output
    features: Callable[[torch.Tensor], torch.Tensor]  # stacked tower outputs -> [B, video tokens, D], trainable
    forward_kept: Callable[[list[list[int]], torch.Tensor, list[torch.Tensor]], torch.Tensor]  # -> logits [B, V]
    prompt: Callable[[Question], list[int]]
    n_visual: int
    tokens_per_frame: int
    frames_per_token: int  # 2 for Qwen: one visual token spans a temporal group of 2 frames


def _llava_recipe(tokenizer, questions: list[Question], seed: int) -> _Recipe:
    from autotune.engine import prompt_ids

    model = build_model(tokenizer, seed)
    model.model.vision_tower.requires_grad_(False)
    tower = _tower_outputs(model, questions[:1], FRAMES)
    check = model.model.get_video_features(
        preprocess_frames(decode_frames(questions[0].video_path, FRAMES), size=(IMAGE_SIZE, IMAGE_SIZE))[None],
        vision_feature_layer=-1, vision_feature_select_strategy="full").pooler_output
    assert torch.allclose(_video_features(model, tower[questions[0].video_id][None]), check, atol=1e-5)
    tokens_per_frame = (IMAGE_SIZE // PATCH_SIZE // 2) ** 2
    n_video_tokens = FRAMES * tokens_per_frame + 1
    return _Recipe(
        model=model, tower=_tower_outputs(model, questions, FRAMES),
        features=lambda stacked: _video_features(model, stacked),
        forward_kept=lambda prompts, video, keep: _forward_kept(model, prompts, video, keep, tokenizer.pad_token_id),
        prompt=lambda q: prompt_ids(tokenizer, q, model.config.video_token_id, n_video_tokens),
        n_visual=n_video_tokens - 1, tokens_per_frame=tokens_per_frame, frames_per_token=1)


def _qwen_recipe(tokenizer, questions: list[Question], seed: int, hybrid: bool = False) -> _Recipe:
    """The vision tower (patch embedding and blocks) is frozen and run once per video; the merger and the LM train.
    hybrid: the Qwen3.5, whose prompt carries each temporal group's timestamp, as the engine renders it."""
    model = (build_qwen3_5_model if hybrid else build_qwen_model)(tokenizer, seed)
    inner = model.model
    inner.visual.requires_grad_(False)
    inner.visual.merger.requires_grad_(True)
    tower, grid = _qwen_tower(inner, questions, _qwen_pixel_settings(hybrid))
    tokens_per_frame = (IMAGE_SIZE // PATCH_SIZE // 2) ** 2
    n_visual = int(grid[0, 0]) * tokens_per_frame

    def features(stacked: torch.Tensor) -> torch.Tensor:
        return inner.visual.merger(stacked.flatten(0, 1)).view(stacked.shape[0], n_visual, -1)

    return _Recipe(model=model, tower=tower, features=features, forward_kept=_qwen_forward_kept(model, grid),
                   prompt=_qwen_prompt(tokenizer, model.config, grid, tokens_per_frame, hybrid), n_visual=n_visual,
                   tokens_per_frame=tokens_per_frame, frames_per_token=2)


def _qwen_pixel_settings(hybrid: bool) -> dict:
    """`autotune.engine.qwen_pixels`' settings for the tiny Qwen's frames (Qwen3-VL's processor for the Qwen3.5)."""
    preprocess = {key: QWEN_PREPROCESS[key] for key in ("patch_size", "temporal_patch_size", "merge_size")}
    sizes = (QWEN3_5_PREPROCESS if hybrid else QWEN_PREPROCESS)["size"]
    preprocess.update(min_pixels=sizes["shortest_edge"], max_pixels=sizes["longest_edge"],
                      mean=tuple(QWEN_PREPROCESS["image_mean"]), std=tuple(QWEN_PREPROCESS["image_std"]),
                      video_processor="qwen3_vl" if hybrid else "qwen2_vl")
    return preprocess


def _qwen_tower(inner, questions: list[Question], preprocess: dict) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per video the frozen blocks' output (the merger's input), and the videos' common grid [1, 3]."""
    from adatp.video import qwen_pixels

    tower, grid = {}, None
    with torch.no_grad():
        for question in questions:
            if question.video_id in tower:
                continue
            pixels, grid = qwen_pixels(decode_frames(question.video_path, FRAMES), (IMAGE_SIZE, IMAGE_SIZE),
                                       preprocess)
            captured: list[torch.Tensor] = []
            hook = inner.visual.merger.register_forward_pre_hook(
                lambda module, args, captured=captured: captured.append(args[0]))
            try:
                reference = inner.get_video_features(pixels, grid).pooler_output[0]
            finally:
                hook.remove()
            tower[question.video_id] = captured[0]
            if len(tower) == 1:  # the merger over the cached blocks' output is the stock video features
                assert torch.allclose(inner.visual.merger(captured[0]), reference, atol=1e-5)
    return tower, grid


def _qwen_prompt(tokenizer, config, grid: torch.Tensor, tokens_per_frame: int,
                 hybrid: bool) -> Callable[[Question], list[int]]:
    """A question's prompt ids with the video expanded as the engine expands it."""
    start, end, pad = config.vision_start_token_id, config.vision_end_token_id, config.video_token_id
    groups, seconds = int(grid[0, 0]), {}
    n_visual = groups * tokens_per_frame

    def video_body(question: Question) -> list[int]:
        if not hybrid:
            return [start] + [pad] * n_visual + [end]
        if question.video_path not in seconds:  # per group `<t seconds><|vision_start|>` N pads `<|vision_end|>`
            fps, total = video_fps_and_length(question.video_path)
            seconds[question.video_path] = qwen3_timestamps(frame_indices(total, FRAMES), fps, 2)
        body = []
        for time_s in seconds[question.video_path][:groups]:
            text = tokenizer(qwen3_timestamp_text(time_s), add_special_tokens=False)["input_ids"]
            body += text + [start] + [pad] * tokens_per_frame + [end]
        return body

    def prompt(question: Question) -> list[int]:
        from autotune.engine import render_prompt

        ids = tokenizer(render_prompt(tokenizer, question), add_special_tokens=False)["input_ids"]
        at = ids.index(pad)
        return ids[: at - 1] + video_body(question) + ids[at + 2 :]

    return prompt


def _qwen_forward_kept(model, grid: torch.Tensor) -> Callable:
    """`_Recipe.forward_kept` for a Qwen: kept tokens at their stock M-RoPE ids (cached per prompt)."""
    inner = model.model
    pad = model.config.video_token_id
    positions: dict[tuple[int, ...], torch.Tensor] = {}

    def rope_positions(ids: list[int]) -> torch.Tensor:
        """[3, L] M-RoPE ids of a prompt, from the stock model's get_rope_index (cached per prompt)."""
        key = tuple(ids)
        if key not in positions:
            tensor = torch.tensor(ids)[None]
            positions[key] = inner.get_rope_index(tensor, mm_token_type_ids=(tensor == pad).int() * 2,
                                                  video_grid_thw=grid)[0][:, 0]
        return positions[key]

    def forward_kept(prompts, video, keep):
        sequences = []
        for ids, video_features, kept in zip(prompts, video, keep, strict=True):
            tensor = torch.tensor(ids)
            embeds = inner.get_input_embeddings()(tensor)
            is_video = tensor == pad
            embeds = embeds.masked_scatter(is_video[:, None], video_features.to(embeds.dtype))
            keep_row = torch.ones(len(ids), dtype=torch.bool)
            keep_row[is_video] = kept
            sequences.append((embeds[keep_row], rope_positions(ids)[:, keep_row]))
        return _packed_last_logits(model, sequences, video)

    return forward_kept


def train(out: Path, data_root: Path, videos: int = 600, steps: int = 16000, batch: int = 16, seed: int = 0,
          prune_augment: float = 0.5, open_share: float = 0.5, lr: float = 1e-3, log=print,
          family: str = "llava_onevision") -> dict:
    """Train on synthetic videos (seeded apart from the demo's), save model + tokenizer + preprocessing to `out`.

    family: "llava_onevision", "qwen2_5_vl" or "qwen3_5".
    prune_augment: share of steps run under random visual-token pruning at a random retention (so, like real
    Video LLMs, the model still answers from a subset of tokens when the right ones survive).
    Three prompt formats share the steps: 30% "What colour was the {kind} object? ..." -> the colour word (ties the
    colour words, whose embeddings are tied input/output, to the visual colours the questions route by), then of the
    rest `open_share` in the open format ("... Answer with one word." -> the kind word) and the others in the
    benchmark's own MCQ format (-> the option letter, which is what the engine scores).
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    started = time.time()
    synthetic.generate(data_root, videos, seed=10_000 + seed, frames=FRAMES)
    questions = synthetic.load(data_root).questions
    open_questions = [_open_question(q) for q in questions]
    colour_questions = [_colour_question(q) for q in questions]
    tokenizer = _family_tokenizer(questions + open_questions + colour_questions, family)
    if family != "llava_onevision":
        recipe = _qwen_recipe(tokenizer, questions, seed, hybrid=family == "qwen3_5")
    else:
        recipe = _llava_recipe(tokenizer, questions, seed)
    formats = {
        "colour": _encoded(recipe, tokenizer, colour_questions, [q.meta["colour"] for q in questions]),
        "mcq": _encoded(recipe, tokenizer, questions, [q.answer for q in questions]),
        "open": _encoded(recipe, tokenizer, open_questions, [q.meta["kind"] for q in questions]),
    }
    history = _fit(recipe, formats, questions, steps, batch, seed, prune_augment, open_share, lr, log, started)
    _save(out, recipe.model, tokenizer, family)
    summary = dict(family=family, videos=videos, questions=len(questions), steps=steps, batch=batch, seed=seed,
                   prune_augment=prune_augment, open_share=open_share, lr=lr,
                   seconds=round(time.time() - started, 1),
                   final_train_accuracy={name: _mean(history[-200:], name, 2) for name in formats})
    (out / "training.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _colour_question(question: Question) -> Question:
    """The colour format: the asked object's kind given, its colour word the answer."""
    return dataclasses.replace(question, question=f"What colour was the {question.meta['kind']} object? Answer with "
                               "one word.", options=("x", "y"), answer="A")


def _family_tokenizer(questions: list[Question], family: str) -> PreTrainedTokenizerFast:
    """A tokenizer trained on every training prompt, as the family's chat template renders it, and its answer."""
    from autotune.engine import render_prompt

    template = CHAT_TEMPLATE if family == "llava_onevision" else QWEN_CHAT_TEMPLATE
    corpus = [render_prompt(None, q, template=template) + " " + q.answer for q in questions]
    return train_tokenizer(corpus, family)


def _encoded(recipe: _Recipe, tokenizer, questions: list[Question],
             words: list[str]) -> tuple[list[list[int]], torch.Tensor]:
    """One format's prompt ids and target token ids."""
    return [recipe.prompt(q) for q in questions], torch.tensor([tokenizer.convert_tokens_to_ids(w) for w in words])


def _fit(recipe: _Recipe, formats: dict, questions: list[Question], steps: int, batch: int, seed: int,
         prune_augment: float, open_share: float, lr: float, log, started: float) -> list[tuple[str, float, float]]:
    """The training loop; returns (format, loss, accuracy) per step."""
    model = recipe.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.02,
                                                   anneal_strategy="cos", div_factor=10, final_div_factor=20)
    rng = random.Random(seed)
    per_frame, per_token = recipe.tokens_per_frame, recipe.frames_per_token
    object_tokens = [_object_tokens(q, per_frame, frames_per_token=per_token) for q in questions]
    target_tokens = [_object_tokens(q, per_frame, only_asked=True, frames_per_token=per_token) for q in questions]
    model.train()
    history = []
    for step in range(steps):
        draw = rng.random()
        kind = "colour" if draw < 0.3 else "open" if draw < 0.3 + open_share * 0.7 else "mcq"
        encoded, targets = formats[kind]
        chosen = rng.sample(range(len(questions)), batch)
        rows = _kept_rows(rng, recipe.n_visual, chosen, step / steps, prune_augment, object_tokens, target_tokens)
        video = recipe.features(torch.stack([recipe.tower[questions[i].video_id] for i in chosen]))
        logits = recipe.forward_kept([encoded[i] for i in chosen], video, rows)
        loss = torch.nn.functional.cross_entropy(logits, targets[chosen])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        accuracy = (logits.argmax(-1) == targets[chosen]).float().mean().item()
        history.append((kind, loss.item(), accuracy))
        if (step + 1) % 100 == 0:
            log(f"step {step + 1}/{steps} " + " ".join(
                f"{name} loss {_mean(history[-100:], name, 1):.3f} acc {_mean(history[-100:], name, 2):.3f}"
                for name in formats) + f" ({time.time() - started:.0f}s)")
    model.eval()
    return history


def _kept_rows(rng: random.Random, n_visual: int, chosen: list[int], progress: float, prune_augment: float,
               object_tokens: list[torch.Tensor], target_tokens: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per chosen question, the [n_visual] visual tokens one step keeps."""
    # Distractor curriculum (a tiny model from scratch does not find 4 object tokens among 256 otherwise):
    # first only the asked object's tokens (learn to read a colour), then every object's tokens (learn to
    # pick the asked kind), then a growing share of background, then whole videos; in that last stage some
    # steps keep a random share of all tokens, like random pruning.
    background = min(1.0, max(0.0, (progress - 0.45) / 0.3))
    random_share = rng.uniform(0.05, 1.0) if progress >= 0.75 and rng.random() < prune_augment else None
    rows = []
    for i in chosen:
        visual = torch.rand(n_visual, generator=torch.Generator().manual_seed(rng.randrange(2**31)))
        if random_share is not None:
            keep = visual < random_share
        else:
            keep = visual < background
            keep[object_tokens[i] if progress >= 0.05 else target_tokens[i]] = True
        rows.append(keep)
    return rows


def _save(out: Path, model, tokenizer, family: str) -> None:
    """Model, tokenizer and the video preprocessing the engine reads back, under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if family == "llava_onevision":
        preprocessing = dict(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5, 0.5, 0.5],
                             image_std=[0.5, 0.5, 0.5], resample=3, rescale_factor=1 / 255, num_frames=FRAMES)
    else:
        preprocessing = QWEN3_5_PREPROCESS if family == "qwen3_5" else QWEN_PREPROCESS
    (out / "video_preprocessor_config.json").write_text(json.dumps(preprocessing, indent=2) + "\n")


def _object_tokens(question: Question, tokens_per_frame: int, only_asked: bool = False,
                   frames_per_token: int = 1) -> torch.Tensor:
    """Flat visual-token indices (t * N + row * 4 + col, t = frame // frames_per_token) of every event's object in
    the question's video (or of the asked object only)."""
    side = int(tokens_per_frame**0.5)
    events = [e for e in question.meta["events"] if not only_asked or e["colour"] == question.meta["colour"]]
    return torch.tensor([frame // frames_per_token * tokens_per_frame + row * side + col for event in events
                         for frame in event["frames"] for row, col in event["cells"]], dtype=torch.long)


def _forward_kept(model, prompts: list[list[int]], video: torch.Tensor, keep: list[torch.Tensor],
                  pad_id: int) -> torch.Tensor:
    """Last-position logits with only `keep` [F*N] visual tokens of each row, at their original positions (the
    same computation as pruning at layer 0); rows are re-packed with left padding."""
    inner = model.model
    video_token = model.config.video_token_id
    sequences = []
    for ids, features, kept in zip(prompts, video, keep, strict=True):
        ids = torch.tensor(ids)
        embeds = inner.get_input_embeddings()(ids)
        is_video = ids == video_token
        embeds = embeds.masked_scatter(is_video[:, None], features.to(embeds.dtype))
        keep_row = torch.ones(len(ids), dtype=torch.bool)
        columns = is_video.nonzero()[:, 0]
        keep_row[columns[:-1]] = kept  # the last video token is image_newline: always kept
        sequences.append((embeds[keep_row], torch.arange(len(ids))[keep_row]))
    return _packed_last_logits(model, sequences, video)


def _packed_last_logits(model, sequences: list[tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor):
    """Rows of (embeddings [L_i, D], positions [..., L_i]) left-padded into one batch -> last-position logits."""
    width = max(len(embeds) for embeds, _ in sequences)
    hidden = like.new_zeros(len(sequences), width, like.shape[-1])
    leading = sequences[0][1].shape[:-1]  # () for 1D positions, (3,) for M-RoPE
    position_ids = torch.zeros(*leading, len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, (embeds, where) in enumerate(sequences):
        hidden[row, width - len(embeds) :] = embeds
        position_ids[..., row, width - len(embeds) :] = where
        mask[row, width - len(embeds) :] = 1
    output = model.model.language_model(inputs_embeds=hidden, attention_mask=mask, position_ids=position_ids)
    return model.lm_head(output.last_hidden_state[:, -1])


def _mean(history: list[tuple], kind: str, field: int) -> float:
    values = [entry[field] for entry in history if entry[0] == kind]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description="Train a demo's tiny Video LLM on synthetic video QA.")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="llava_onevision")
    parser.add_argument("--out", type=Path, default=None, help="default: the family's directory under assets/")
    parser.add_argument("--data", type=Path, default=Path("runs/synthetic-train"))
    parser.add_argument("--videos", type=int, default=600)
    parser.add_argument("--steps", type=int, default=16000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = args.out or FAMILIES[args.family]
    print(json.dumps(train(out, args.data, args.videos, args.steps, args.batch, args.seed, family=args.family),
                     indent=2))


if __name__ == "__main__":
    main()
