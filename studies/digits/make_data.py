"""Write the digits study's files: scikit-learn's handwritten digits (UCI ML digits, 1,797 8x8 scans by 43 people,
shipped inside scikit-learn, so nothing is downloaded), as training files and evaluation task files in the schemas
of docs/data-formats.md. The first 75% of the scans are the train split, the last 25% the test split.

    python studies/digits/make_data.py [OUT_DIR]      # default: studies/digits/data

Training (split `train`): captions ("a handwritten 7"), interleaved pages of several scans with their captions or
with question-answer pairs about them, and text ("seven is written 7 ."). Evaluation tasks, each file with a `split` column (demonstrations come from
`train`, items from `test`): captioning with three references per scan, VQA (which digit; is it even) with a
`category` column, and a text-only task (the digit after a number word, which the training text states: a check
that the pipeline scores what a model has learned, not a benchmark).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from mm1core.data.byo import write_documents

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEST_SHARE = 0.25


def _png(pixels: np.ndarray) -> bytes:
    """An 8x8 scan (0-16, ink high) as dark ink on white, 32x32 RGB PNG."""
    gray = (255 - pixels * 255 / 16).astype(np.uint8)
    image = Image.fromarray(gray, mode="L").resize((32, 32), Image.Resampling.NEAREST).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _parity(label: int) -> str:
    return "yes" if label % 2 == 0 else "no"


def write(out: Path) -> dict[str, Path]:
    digits = load_digits()
    images = [_png(scan) for scan in digits.images]
    labels = [int(t) for t in digits.target]
    first_test = int(len(labels) * (1 - TEST_SHARE))
    split = ["train" if i < first_test else "test" for i in range(len(labels))]
    train = [i for i, s in enumerate(split) if s == "train"]
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        name: out / f"{name}.parquet"
        for name in ("captions", "pages", "text", "caption-task", "vqa-task", "text-task")
    }

    write_documents(
        paths["captions"],
        "caption",
        ({"image": images[i], "caption": f"a handwritten {labels[i]}"} for i in train),
    )

    def qa(i: int, which: int) -> str:
        if which % 2 == 0:
            return f"question what digit is this ? answer {labels[i]} ."
        return f"question is the digit even ? answer {_parity(labels[i])} ."

    # Half the pages list captions, half question-answer pairs, as the world's interleaved pages do: a model learns
    # the few-shot formats (several captioned images in a row) from pages like these.
    pages = []
    for page, start in enumerate(range(0, len(train) - 3, 4)):
        chunk = train[start : start + 4]
        items = []
        for j, i in enumerate(chunk):
            text = f"a handwritten {labels[i]}" if page % 2 == 0 else qa(i, page + j)
            items += [{"image": images[i], "text": None}, {"image": None, "text": text}]
        pages.append({"items": items})
    write_documents(paths["pages"], "interleaved", pages)
    write_documents(
        paths["text"],
        "text",
        (
            {"text": f"{WORDS[n]} is written {n} . after {WORDS[n]} comes {(n + 1) % 10} ."}
            for n in list(range(10)) * 20
        ),
    )

    write_documents(
        paths["caption-task"],
        "task:caption",
        [
            {
                "image": images[i],
                "references": [
                    f"a handwritten {labels[i]}",
                    f"the digit {labels[i]}",
                    f"a {WORDS[labels[i]]}",
                ],
                "split": split[i],
            }
            for i in range(len(labels))
        ],
    )
    vqa = []
    for i in range(len(labels)):
        vqa.append(
            {
                "image": images[i],
                "question": "what digit is this ?",
                "answers": [str(labels[i])],
                "category": "identity",
                "split": split[i],
            }
        )
        vqa.append(
            {
                "image": images[i],
                "question": "is the digit even ?",
                "answers": [_parity(labels[i])],
                "category": "parity",
                "split": split[i],
            }
        )
    write_documents(paths["vqa-task"], "task:vqa", vqa)
    write_documents(
        paths["text-task"],
        "task:text",
        [
            {
                "prompt": f"after {WORDS[n]} comes",
                "answers": [str((n + 1) % 10)],
                "split": "train" if k < 3 else "test",
            }
            for k in range(6)
            for n in range(10)
        ],
    )
    return paths


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "data"
    for name, path in write(target).items():
        print(f"{name}: {path}")
