"""`relevance: siglip` with a tiny SigLIP built from config, saved locally and loaded back by path."""

import pytest
import torch
from tiny import TOKENS_PER_FRAME, VIDEO_TOKEN, tiny_model
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

import adatp
from adatp.relevance import SiglipRelevance

WORDS = "what colour was the shape red green blue circle square answer with letter".split()


def word_tokenizer(directory, offset=0):
    vocab = {"<pad>": 0} | {word: i + 1 + offset for i, word in enumerate(WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>")
    fast.save_pretrained(directory)
    return fast


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("siglip")
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=16, patch_size=4),
    )
    SiglipModel(config).save_pretrained(directory)
    word_tokenizer(directory)
    return str(directory)


def test_siglip_features_drive_the_selection(siglip_dir, tmp_path):
    model = tiny_model()
    llava_tokenizer = word_tokenizer(tmp_path, offset=100)
    question = "what colour was the shape"
    frames = 5
    question_ids = torch.tensor(llava_tokenizer(question)["input_ids"])
    input_ids = torch.cat([torch.tensor([150, 151]), torch.full((frames * TOKENS_PER_FRAME + 1,), VIDEO_TOKEN),
                           question_ids])[None]
    pixels = torch.randn(1, frames, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    config = adatp.AdaTPConfig(relevance="siglip", siglip_path=siglip_dir, prune_layer=0, score="norm",
                               retention=0.3, tau_s=0.5, tau_t=0.5, alpha_boost=3.0)
    with torch.no_grad():
        with adatp.pruning(model, config, tokenizer=llava_tokenizer) as state:
            model(input_ids=input_ids, pixel_values_videos=pixels)
            kept = state.kept_indices
            model.generate(input_ids=input_ids, pixel_values_videos=pixels, max_new_tokens=2, do_sample=False)
            assert torch.equal(state.kept_indices, kept)  # generate() drops pixels early; siglip still sees them
        siglip = SiglipRelevance(siglip_dir)
        frame_features = siglip.frame_features(pixels)
        question_features = siglip.text_features([question])
        video = model.model.get_video_features(pixels, vision_feature_layer=-1,
                                               vision_feature_select_strategy="full").pooler_output
        norms = video[:, :-1].norm(dim=-1).view(1, frames, TOKENS_PER_FRAME)
    assert frame_features.shape == (1, frames, 32) and question_features.shape == (1, 32)
    expected = adatp.select_visual_tokens(config, frames, TOKENS_PER_FRAME, scores=norms,
                                          frame_features=frame_features, question=question_features)
    assert torch.equal(kept, expected)


def test_siglip_needs_tokenizer_and_directory(siglip_dir, tmp_path):
    model = tiny_model()
    with pytest.raises(ValueError, match="tokenizer"):
        adatp.enable(model, adatp.AdaTPConfig(relevance="siglip", siglip_path=siglip_dir))
    with pytest.raises(FileNotFoundError, match="no SigLIP checkpoint"):
        SiglipRelevance(str(tmp_path / "missing"))
