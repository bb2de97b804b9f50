"""The procedurally generated world: scenes of objects and signs on a grid, drawn once and downsampled per resolution.

A scene is drawn on a fixed canvas and box-downsampled to the encoder's resolution, so the content of an image is
identical across resolutions and only its detail changes: reading a sign needs pixels, colour does not. Every scene is
a pure function of (world config, seed), so data can be generated on the fly and reproduced exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "COLORS",
    "WorldConfig",
    "SHAPES",
    "SIZES",
    "Scene",
    "SceneObject",
    "Sign",
    "render_scene",
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

# 5x7 bitmap digits, one string per row: small enough that glyph scale decides legibility at a given resolution.
_FONT_5X7 = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11110", "00001", "00001", "01110", "00001", "00001", "11110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}


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


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, cx: float, cy: float, cell_px: float) -> None:
    radius = cell_px * (0.18 if obj.size == "small" else 0.34)
    fill = COLORS[obj.color]
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)], fill=fill)
    elif obj.shape == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius, cy), (cx, cy + radius), (cx - radius, cy)], fill=fill)
    elif obj.shape == "cross":
        arm = radius / 3
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; known: {', '.join(SHAPES)}")


def _draw_sign(canvas: np.ndarray, sign: Sign, cx: float, cy: float) -> None:
    g = sign.glyph_scale
    width = len(sign.text) * 6 * g + g
    height = 9 * g
    # Clamped inside the canvas: a sign wider than its cell may overhang its neighbours but never the edge.
    x0 = min(max(0, int(cx - width / 2)), canvas.shape[1] - width)
    y0 = min(max(0, int(cy - height / 2)), canvas.shape[0] - height)
    canvas[y0 : y0 + height, x0 : x0 + width] = 255
    for i, char in enumerate(sign.text):
        glyph = np.array([[c == "1" for c in row] for row in _FONT_5X7[char]])  # (7, 5)
        pixels = np.kron(glyph, np.ones((g, g), dtype=bool))  # (7g, 5g)
        gx, gy = x0 + g + i * 6 * g, y0 + g
        canvas[gy : gy + 7 * g, gx : gx + 5 * g][pixels] = 0


def render_scene(scene: Scene, cfg: WorldConfig, resolution: int) -> np.ndarray:
    """(resolution, resolution, 3) uint8 image of the scene."""
    cell_px = cfg.canvas_px / cfg.grid_size
    jitter = random.Random(scene.jitter_seed)
    image = Image.new("RGB", (cfg.canvas_px, cfg.canvas_px), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    for _ in range(cfg.clutter):
        points = [jitter.uniform(0, cfg.canvas_px) for _ in range(4)]
        draw.line(points, fill=(170, 170, 160), width=max(1, cfg.canvas_px // 96))

    def centre(cell: int) -> tuple[float, float]:
        row, col = divmod(cell, cfg.grid_size)
        dx, dy = (jitter.uniform(-0.06, 0.06) * cell_px for _ in range(2))
        return (col + 0.5) * cell_px + dx, (row + 0.5) * cell_px + dy

    for obj in scene.objects:
        _draw_object(draw, obj, *centre(obj.cell), cell_px)
    canvas = np.asarray(image).copy()
    for sign in scene.signs:
        _draw_sign(canvas, sign, *centre(sign.cell))
    if resolution != cfg.canvas_px:
        canvas = np.asarray(Image.fromarray(canvas).resize((resolution, resolution), Image.BOX))
    return canvas
