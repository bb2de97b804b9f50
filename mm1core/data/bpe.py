"""Byte-level BPE tokenizer for bring-your-own text, trained locally with Hugging Face `tokenizers`.

Same interface as WordTokenizer, with the same special tokens at ids 0..3. Byte-level means any text encodes
(no unknown token) and decodes back exactly. Nothing is ever downloaded: tokenizers are trained from the data
and stored as JSON.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from mm1core.data.byo import Paths, expand_paths, read_texts
from mm1core.data.tokenizer import BOS, EOS, IMAGE, PAD
from mm1core.storage import atomic_write_text

__all__ = ["DEFAULT_VOCAB_SIZE", "SPECIAL_TOKENS", "BPETokenizer", "tokenizer_for_files"]

SPECIAL_TOKENS = (PAD, BOS, EOS, IMAGE)
DEFAULT_VOCAB_SIZE = 2000
_MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256  # every byte must have a token
_SPECIAL_PATTERN = re.compile("|".join(map(re.escape, SPECIAL_TOKENS)))
# Part of the cache key: bump it when training changes, so that old cached tokenizers are not reused.
_CACHE_FORMAT = 1


class BPETokenizer:
    def __init__(self, tokenizer: Tokenizer) -> None:
        ids = [tokenizer.token_to_id(token) for token in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"special tokens {SPECIAL_TOKENS} must have ids 0..3, found {ids}")
        self._tokenizer = tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.image_id = ids

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> BPETokenizer:
        if vocab_size < _MIN_VOCAB_SIZE:
            raise ValueError(f"vocab_size must be at least {_MIN_VOCAB_SIZE} (4 special tokens + 256 bytes)")
        tokenizer = Tokenizer(models.BPE())
        # No prefix space: "a b" then decodes to exactly "a b", not " a b".
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        # <image> absorbs the space before it: a document's "... word <image> word" then costs one token per
        # placeholder, not a stray space token each time; decode puts the space back.
        specials = [AddedToken(token, special=True, lstrip=token == IMAGE) for token in SPECIAL_TOKENS]
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(_without_specials(texts), trainer)
        return cls(tokenizer)

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        return cls(Tokenizer.from_str(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> None:
        """Atomically: a concurrent reader sees the old file or the whole new one."""
        atomic_write_text(Path(path), self._tokenizer.to_str())

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Exact inverse of encode for text without special tokens, and for documents' "word <image> word"."""
        pieces: list[str] = []
        for special, run in itertools.groupby(ids, key=lambda i: i < len(SPECIAL_TOKENS)):
            if not special:
                pieces.append(self._tokenizer.decode(list(run)))
                continue
            for i in run:
                pieces.append(f" {IMAGE}" if i == self.image_id and pieces else SPECIAL_TOKENS[i])
        return "".join(pieces)


def _without_specials(texts: Iterable[str]) -> Iterator[str]:
    # Special tokens are whole tokens; learning merges inside "<image>" would waste the vocabulary.
    for text in texts:
        yield from (piece for piece in _SPECIAL_PATTERN.split(text) if piece.strip())


def tokenizer_for_files(
    paths_by_kind: Mapping[str, Paths],
    vocab_size: int,
    cache_dir: str | Path,
    *,
    extra_texts: Sequence[str] = (),
) -> BPETokenizer:
    """A tokenizer trained on the text of the files (and extra_texts), cached in cache_dir until a file, the extra
    texts or vocab_size change."""
    files = {kind: expand_paths(paths) for kind, paths in sorted(paths_by_kind.items())}
    stamp = [
        [kind, [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths]]
        for kind, paths in files.items()
    ]
    extra = hashlib.sha256("\n".join(extra_texts).encode()).hexdigest()
    key = json.dumps([_CACHE_FORMAT, vocab_size, stamp, extra])
    path = Path(cache_dir) / f"bpe-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.exists():
        return BPETokenizer.load(path)
    texts = itertools.chain(
        itertools.chain.from_iterable(read_texts(paths, kind) for kind, paths in files.items()), extra_texts
    )
    tokenizer = BPETokenizer.train(texts, vocab_size)
    tokenizer.save(path)
    return tokenizer
