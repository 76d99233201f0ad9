"""The evaluation engine on a tiny LLaVA-OV saved with save_pretrained and loaded back, over synthetic mp4s."""

import json
import shutil

import pytest
import torch

import adatp
from autotune.cache import FeatureCache
from autotune.data import synthetic
from autotune.engine import Engine
from autotune.tinymodel import CHAT_TEMPLATE, build_model, train_tokenizer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(root, 6, seed=3)
    return synthetic.load(root).questions


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, dataset):
    from autotune.engine import render_prompt

    directory = tmp_path_factory.mktemp("tiny-model")
    tokenizer = train_tokenizer([render_prompt(None, q, template=CHAT_TEMPLATE) for q in dataset])
    build_model(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / "video_preprocessor_config.json").write_text(
        '{"size": {"height": 32, "width": 32}, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],'
        ' "num_frames": 16}'
    )
    return directory


def test_second_evaluation_never_runs_the_vision_tower(model_dir, dataset, tmp_path):
    engine = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    first = engine.evaluate(dataset, adatp.AdaTPConfig(retention=0.3))
    videos = len({q.video_id for q in dataset})
    assert engine.vision_calls == videos
    second = engine.evaluate(dataset, adatp.AdaTPConfig(retention=0.5, tau_s=0.5))
    assert engine.vision_calls == videos
    assert second.seconds["vision"] == 0.0 and second.seconds["decode"] == 0.0
    # A new process (new engine) with the same cache directory reads features from disk.
    fresh = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    again = fresh.evaluate(dataset, adatp.AdaTPConfig(retention=0.3))
    assert fresh.vision_calls == 0
    assert again.predictions == first.predictions


def test_full_retention_matches_vanilla_and_ratios(model_dir, dataset):
    engine = Engine(str(model_dir))
    vanilla = engine.evaluate(dataset, None)
    full = engine.evaluate(dataset, adatp.AdaTPConfig(retention=1.0))
    assert full.predictions == vanilla.predictions
    assert vanilla.flops_ratio == 1.0 and full.flops_ratio == pytest.approx(1.0)
    pruned = engine.evaluate(dataset, adatp.AdaTPConfig(retention=0.25, prune_layer=2))
    n_text = len(engine.prompt_ids(dataset[0])) - engine.n_visual
    expected = adatp.flops_ratio(engine.model.config.text_config, engine.n_visual, n_text, 0.25, 2)
    assert pruned.flops_ratio == pytest.approx(expected, rel=1e-3)
    assert pruned.kept_tokens == round(0.25 * 256) and pruned.visual_tokens == 256
    assert set(pruned.predictions) == {q.qid for q in dataset}
    assert pruned.accuracy == sum(pruned.correct.values()) / len(dataset)


def test_cuda_graphs_option_reaches_the_pruning_state_and_changes_no_answer(model_dir, dataset, monkeypatch):
    config = adatp.AdaTPConfig(retention=0.3, gamma_cap=0.3)
    eager = Engine(str(model_dir)).evaluate(dataset, config)
    engine = Engine(str(model_dir), cuda_graphs=True)
    states = []
    enable = adatp.enable

    def spy(*args, **kwargs):
        states.append(enable(*args, **kwargs))
        return states[-1]

    monkeypatch.setattr(adatp, "enable", spy)
    graphed = engine.evaluate(dataset, config)
    # On a CPU the graphs are never captured (CUDA only): the same answers, and nothing captured.
    assert len(states) == 1 and states[0].graphs is not None and states[0].graphs.captures == 0
    assert graphed.predictions == eager.predictions and graphed.accuracy == eager.accuracy


def test_videos_gone_after_loading_are_skipped_with_reasons(model_dir, dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset[0].video_path.rsplit("/videos/", 1)[0], root)
    questions = synthetic.load(root).questions
    shutil.rmtree(root / "videos")
    result = Engine(str(model_dir)).evaluate(questions, adatp.AdaTPConfig(retention=0.3))
    assert len(result.skipped) == len(questions) and not result.predictions and result.accuracy == 0.0
    assert all(".mp4" in reason for reason in result.skipped.values())


def test_corrupt_video_fails_only_its_questions(model_dir, dataset, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(dataset[0].video_path.rsplit("/videos/", 1)[0], root)
    questions = synthetic.load(root).questions
    broken = questions[0].video_path
    with open(broken, "r+b") as handle:
        handle.truncate(200)
    result = Engine(str(model_dir)).evaluate(questions, adatp.AdaTPConfig(retention=0.3))
    broken_qids = {q.qid for q in questions if q.video_path == broken}
    assert set(result.skipped) == broken_qids
    assert len(result.predictions) == len(questions) - len(broken_qids)


def test_vanilla_predictions_are_cached_on_disk(model_dir, dataset, tmp_path):
    engine = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    first = engine.vanilla_predictions(dataset, "synthetic-test")
    calls = engine.vision_calls
    again = Engine(str(model_dir), cache_dir=tmp_path / "cache")
    assert again.vanilla_predictions(dataset, "synthetic-test") == first
    assert again.vision_calls == 0 and calls > 0


def test_feature_cache_bounds_and_weights_only(tmp_path):
    cache = FeatureCache(tmp_path, memory_bytes=3 * 400, disk_bytes=2 * 1000)
    for i in range(4):
        cache.put(f"{i:02d}key", torch.full((100,), float(i)))  # 400 bytes in memory each
    assert len(cache._memory) == 3 and "00key" not in cache._memory
    on_disk = sorted(p.name for p in tmp_path.glob("*/*.pt"))
    assert len(on_disk) <= 2 and "03key.pt" in on_disk
    cache.clear_memory()
    assert torch.equal(cache.get("03key"), torch.full((100,), 3.0))
    assert cache.get("00key") is None and cache.misses == 1 and cache.hits == 1
    (tmp_path / "ba").mkdir()
    (tmp_path / "ba" / "badkey.pt").write_bytes(b"not a tensor")
    assert cache.get("badkey") is None  # a foreign file is a miss, and removed
    assert not (tmp_path / "ba" / "badkey.pt").exists()


def test_poisoned_cache_entries_are_misses(model_dir, dataset, tmp_path):
    """A valid .pt holding the wrong tensor, and a torn vanilla-answers file: recomputed, never a failed trial.
    (Feature entries; the prefix cache's are in test_engine_prefix.py, so it is off here.)"""
    engine = Engine(str(model_dir), cache_dir=tmp_path / "cache", prefix_cache=False)
    reference = engine.evaluate(dataset, adatp.AdaTPConfig(retention=0.3))
    files = sorted((tmp_path / "cache" / "features").glob("*/*.pt"))
    assert len(files) == len({q.video_id for q in dataset})
    torch.save(torch.zeros(3, 5), files[0])  # loads fine, wrong shape
    torch.save(torch.zeros(engine.n_visual + 1, engine.model.config.text_config.hidden_size, dtype=torch.long),
               files[1])  # right shape, not features
    fresh = Engine(str(model_dir), cache_dir=tmp_path / "cache", prefix_cache=False)
    again = fresh.evaluate(dataset, adatp.AdaTPConfig(retention=0.3))
    assert again.predictions == reference.predictions and not again.skipped
    assert fresh.cache.rejected == 2 and fresh.vision_calls == 2
    fresh.vanilla_predictions(dataset, "synthetic-test")
    (answers,) = (tmp_path / "cache" / "vanilla").glob("*.json")
    expected = answers.read_text()
    answers.write_text(expected[: len(expected) // 2])  # a half-written file, as a killed writer would leave
    assert fresh.vanilla_predictions(dataset, "synthetic-test") == json.loads(expected)
    assert json.loads(answers.read_text()) == json.loads(expected)  # rewritten whole
    assert not list((tmp_path / "cache" / "vanilla").glob("*.tmp"))


@pytest.mark.parametrize("extraction", ["lmms-eval-0.7", "strict"])
def test_generate_mode_reads_letters_with_the_chosen_extraction(model_dir, dataset, extraction):
    """Generate mode decodes, then extracts under the engine's protocol; LongVideoBench's random fallback is
    recorded per question and seeded (a second run draws the same letters)."""
    import dataclasses

    from autotune.data.protocol import extract_answer, lmms_eval_answer, protocol_version

    engine = Engine(str(model_dir), mode="generate", extraction=extraction)
    questions = [dataclasses.replace(q, dataset="longvideobench") for q in dataset]
    texts: list[str] = []
    decode = engine.tokenizer.batch_decode

    def spy(*args, **kwargs):  # the real decode; we keep what it returned
        out = decode(*args, **kwargs)
        texts.extend(out)
        return out

    engine.tokenizer.batch_decode = spy
    result = engine.evaluate(questions, None)
    assert result.protocol == protocol_version(extraction) and len(texts) == len(questions)
    for question, text in zip(questions, texts, strict=True):
        if extraction == "strict":
            assert result.predictions[question.qid] == extract_answer(text, len(question.options))
        else:
            letter, drawn = lmms_eval_answer(text, question)
            assert result.predictions[question.qid] == letter
            assert (question.qid in result.drawn) == drawn
    if extraction == "lmms-eval-0.7":
        assert result.drawn  # this untrained model's words name no letter: lmms-eval guesses
        assert engine.evaluate(questions, None).predictions == result.predictions
    else:
        assert result.drawn == []
