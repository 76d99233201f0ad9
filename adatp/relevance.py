"""`relevance: siglip`: frame and question features from a local SigLIP checkpoint (the paper's text encoder).

Frame features are SigLIP's pooled image embeddings of the LLaVA-OV frames (resized to the checkpoint's image
size; both use SigLIP's 0.5/0.5 normalisation, so pixel values carry over); the question feature is SigLIP's
pooled text embedding. Both live in SigLIP's joint space, so their cosine is meaningful.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, SiglipModel


class SiglipRelevance:
    def __init__(self, path: str, device=None, max_length: int = 64) -> None:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"relevance 'siglip': no SigLIP checkpoint directory at {path}")
        self.model = SiglipModel.from_pretrained(path).eval().to(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_length = max_length
        self.image_size = self.model.config.vision_config.image_size

    @torch.no_grad()
    def frame_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """[B, F, 3, H, W] LLaVA-OV frames -> [B, F, Dg] pooled SigLIP image embeddings."""
        batch, frames = pixel_values_videos.shape[:2]
        pixels = pixel_values_videos.flatten(0, 1).to(self.model.dtype)
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            pixels = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", align_corners=False)
        pooled = self.model.get_image_features(pixel_values=pixels).pooler_output
        return pooled.view(batch, frames, -1)

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> torch.Tensor:
        """Question texts -> [B, Dg] pooled SigLIP text embeddings (padded to max_length, as SigLIP was trained)."""
        tokens = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.model.device)
        return self.model.get_text_features(input_ids=tokens["input_ids"]).pooler_output
