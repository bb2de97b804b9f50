"""The procedurally generated world: its knobs (WorldConfig) and scenes of objects and signs on a grid.

Every scene is a pure function of (world config, seed), so data can be generated on the fly and reproduced exactly.
render.py draws them; this module imports neither numpy nor Pillow, so configs and the planner can use it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = [
    "COLORS",
    "WorldConfig",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "Sign",
    "sample_scene",
    "positions",
]


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """Difficulty knobs of the world; every result is logged with them (docs/world.md says why each is set so)."""

    canvas_px: int = 192
    grid_size: int = 4  # objects and signs sit in the cells of a grid_size x grid_size grid
    min_objects: int = 2
    max_objects: int = 6
    min_signs: int = 1
    max_signs: int = 2
    sign_length: int = 3  # digits per sign
    glyph_scales: tuple[int, ...] = (2, 3)  # canvas pixels per font pixel; one per sign, drawn at random
    clutter: int = 2  # thin distractor strokes behind the objects


COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "large")
# Cell names for a 3x3 grid, in reading order; bigger grids are named by row/column numbers.
_GRID3_NAMES = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    cell: int


@dataclass(frozen=True)
class Sign:
    text: str  # digits
    glyph_scale: int
    cell: int


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]  # in cell order
    signs: tuple[Sign, ...]  # in cell order
    jitter_seed: int


def positions(grid_size: int) -> tuple[str, ...]:
    if grid_size == 3:
        return _GRID3_NAMES
    return tuple(f"r{r}c{c}" for r in range(grid_size) for c in range(grid_size))


def sample_scene(cfg: WorldConfig, seed: int) -> Scene:
    rng = random.Random(seed)
    num_objects = rng.randint(cfg.min_objects, cfg.max_objects)
    num_signs = rng.randint(cfg.min_signs, cfg.max_signs)
    cells = rng.sample(range(cfg.grid_size**2), num_objects + num_signs)
    objects = tuple(
        sorted(
            (
                SceneObject(rng.choice(SHAPES), rng.choice(list(COLORS)), rng.choice(SIZES), cell)
                for cell in cells[:num_objects]
            ),
            key=lambda o: o.cell,
        )
    )
    signs = tuple(
        sorted(
            (
                Sign(
                    text="".join(rng.choice("0123456789") for _ in range(cfg.sign_length)),
                    glyph_scale=rng.choice(cfg.glyph_scales),
                    cell=cell,
                )
                for cell in cells[num_objects:]
            ),
            key=lambda s: s.cell,
        )
    )
    return Scene(objects=objects, signs=signs, jitter_seed=rng.getrandbits(31))
