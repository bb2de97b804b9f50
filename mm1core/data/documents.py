"""The unit every data source produces: a document of words with `<image>` placeholders and what fills them.

Generated documents carry `Scene`s (rendered lazily at the trial's resolution); bring-your-own documents carry encoded
image bytes (decoded and resized the same way). Loaders, the mixture and the evaluation all work on documents, so
real data and the generated world go through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

from mm1core.data.world import Scene

__all__ = ["IMAGE_PLACEHOLDER", "Document", "ImageRef"]

IMAGE_PLACEHOLDER = "<image>"
ImageRef = Scene | bytes


@dataclass(frozen=True)
class Document:
    text: str  # whitespace-separated words; one IMAGE_PLACEHOLDER per entry of `images`, in order
    images: tuple[ImageRef, ...]
    source: str  # the mixture source it came from: caption, recaption, interleaved or text

    def __post_init__(self) -> None:
        placeholders = self.text.split().count(IMAGE_PLACEHOLDER)
        if placeholders != len(self.images):
            raise ValueError(
                f"a {self.source} document has {placeholders} {IMAGE_PLACEHOLDER} placeholders "
                f"but {len(self.images)} images"
            )
