"""A prompt the model answers: its text up to where the answer starts, its images, and what a right answer is."""

from __future__ import annotations

from dataclasses import dataclass

from mm1core.data.world import Scene

__all__ = ["Prompt"]


@dataclass
class Prompt:
    text: str  # ends where the model's answer starts
    # One per placeholder, demonstrations first: a world scene (rendered) or a file's encoded image bytes (decoded).
    scenes: list[Scene | bytes]
    references: list[str]  # what a right answer is (CIDEr references, or the VQA answers)
    category: str
