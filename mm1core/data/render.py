"""Drawing a scene of the world: on a fixed canvas, then box-downsampled to the encoder's resolution, so the content of
an image is identical across resolutions and only its detail changes (reading a sign needs pixels, colour does not).

Apart from world.py, which only samples scenes, so that configs and the planner never import numpy or Pillow.
"""

from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageDraw

from mm1core.data.world import COLORS, SHAPES, Scene, SceneObject, Sign, WorldConfig

__all__ = ["render_scene"]

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
