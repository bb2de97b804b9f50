"""The vision transformer: patch grids per stem, and stems named as validation names them."""

from __future__ import annotations

import pytest
import torch

from mm1core.config import (
    ViTConfig,
)
from mm1core.vit import STEM_BUILDERS, ViT


@pytest.mark.parametrize("stem", sorted(STEM_BUILDERS))
def test_vit_shapes(stem):
    vit = ViT(ViTConfig(resolution=32, patch_size=8, width=32, depth=1, num_heads=2, stem=stem))
    out = vit(torch.rand(3, 3, 32, 32))
    assert out.shape == (3, vit.num_patches, vit.embed_dim) == (3, 16, 32)


def test_stem_builders_match_validation_names():
    from mm1core.config import STEMS

    assert set(STEM_BUILDERS) == set(STEMS)
