"""The vision transformer: the patch grid it gives with every registered stem."""

from __future__ import annotations

import pytest
import torch

from mm1core.config import STEMS, ViTConfig
from mm1core.vit import ViT


@pytest.mark.parametrize("stem", list(STEMS))
def test_vit_shapes(stem):
    vit = ViT(ViTConfig(resolution=32, patch_size=8, width=32, depth=1, num_heads=2, stem=stem))
    out = vit(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, vit.num_patches, vit.embed_dim) == (3, 16, 32)
