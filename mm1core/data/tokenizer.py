"""Word-level tokenizer over a closed vocabulary (the world's words plus special tokens), and the interface every
tokenizer offers (the BPE for users' data in bpe.py has it too)."""

from __future__ import annotations

from typing import Protocol

__all__ = ["BOS", "EOS", "IMAGE", "PAD", "Tokenizer", "WordTokenizer"]

PAD, BOS, EOS, IMAGE = "<pad>", "<bos>", "<eos>", "<image>"


class Tokenizer(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int
    image_id: int

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class WordTokenizer:
    def __init__(self, words: list[str]) -> None:
        self.itos = [PAD, BOS, EOS, IMAGE] + sorted(set(words))
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.image_id = (self.stoi[t] for t in (PAD, BOS, EOS, IMAGE))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[w] for w in text.split()]
        except KeyError as err:
            raise ValueError(
                f"word {err.args[0]!r} is not in the vocabulary of {self.vocab_size} words"
            ) from None

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.itos[i] for i in ids)
