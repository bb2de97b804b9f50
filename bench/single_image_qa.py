"""Diagnosis for the reference recipe (docs/reference-recipe.md, items 11-19 and 22-23): the `small` model trained on
single-image questions only (answer-only loss, batch 32, the encoder frozen after its cached pre-training), with
held-out accuracy per category every 250 steps. Outside `mm1ablate run` on purpose: it isolates the multimodal LM's
question answering from the data mixture, the few-shot formats and the evaluation suite, at ~0.07 s a step on one
core.

    .venv/bin/python bench/single_image_qa.py --steps 500 --one-object --categories color,shape,size
    .venv/bin/python bench/single_image_qa.py --steps 1500 --curriculum color:500
    .venv/bin/python bench/single_image_qa.py --steps 500 --one-object --override '{"lm.width": 256}'
    .venv/bin/python bench/single_image_qa.py --steps 500 --override '{"connector.feature_norm": "none"}'  # raw features
    .venv/bin/python bench/single_image_qa.py --steps 2500 --attention --variant shift  # item 19
    .venv/bin/python bench/single_image_qa.py --steps 2000 --categories reading --override '{"encoder.resolution": 32}'
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from collections import defaultdict
from pathlib import Path

import torch

from mm1core import blocks
from mm1core.config import apply_overrides, config_from_dict, config_to_dict
from mm1core.data.documents import IMAGE_PLACEHOLDER, Document
from mm1core.data.sources import batch_from_documents, build_tokenizer
from mm1core.data.text import qa_words, question
from mm1core.data.world import positions, sample_scene
from mm1core.encoder_pretrain import pretrain_encoder
from mm1core.losses import LOSSES
from mm1core.mm1 import build_mm1
from mm1core.presets import get_preset
from mm1core.train import get_lr


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--categories", default="color,shape,size")
    parser.add_argument(
        "--curriculum", default="", help="'cats:until_step;...': only those categories until then"
    )
    parser.add_argument(
        "--one-object", action="store_true", help="scenes of one object: no lookup by place needed"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--freeze", default="frozen-encoder", help="a train.freeze value")
    parser.add_argument("--override", default="{}", help="JSON config overrides of the small preset")
    parser.add_argument("--connector-norm", action="store_true", help="a LayerNorm on the connector's output")
    parser.add_argument(
        "--constant-lr", action="store_true", help="hold the peak rate after warm-up (no decay)"
    )
    parser.add_argument("--input-norm", action="store_true", help="a LayerNorm on the encoder's features")
    parser.add_argument(
        "--variant",
        default="",
        help="comma-separated diagnostic question forms (not the world's): "
        "count-total (counting never names a colour), shift (0-8 filler words before the image, so that no lookup can go by a fixed offset)",
    )
    parser.add_argument(
        "--attention",
        action="store_true",
        help="report attention from the answer onto the asked cell's image token and onto all image tokens",
    )
    parser.add_argument("--cache", type=Path, default=Path("results/cache"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    cfg = config_from_dict(apply_overrides(config_to_dict(get_preset("small")), json.loads(args.override)))
    world = cfg.data.world
    if args.one_object:
        world = dataclasses.replace(world, min_objects=1, max_objects=1)
    tokenizer = build_tokenizer(cfg.data)
    torch.manual_seed(args.seed)
    model = build_mm1(cfg, tokenizer)
    state, _ = pretrain_encoder(cfg, device=torch.device("cpu"), cache_dir=args.cache)
    if state is not None:
        model.image_encoder.load_pretrained(state)
    model.freeze(args.freeze)

    def make(docs: list[Document]):
        return batch_from_documents(
            docs,
            tokenizer,
            world,
            resolution=cfg.encoder.resolution,
            num_image_tokens=cfg.connector.num_image_tokens,
            max_seq_len=cfg.data.max_seq_len,
            answer_only=True,
        )

    if model.standardize:  # connector.feature_norm: standardize, measured as a trial measures it (pipeline)
        rng = random.Random("stats")
        scenes = [sample_scene(world, rng.getrandbits(60)) for _ in range(256)]
        prompt = f"{IMAGE_PLACEHOLDER} {qa_words('how many objects are there', '1')}"
        model.fit_feature_norm(make([Document(prompt, (s,), "i") for s in scenes]).images)
    if args.input_norm:
        model.input_norm = torch.nn.LayerNorm(cfg.encoder.width)
        encode2 = model.image_encoder.forward
        model.image_encoder.forward = lambda x: model.input_norm(encode2(x))
    if args.connector_norm:
        model.connector_norm = torch.nn.LayerNorm(cfg.lm.width)
        connect = model.connector.forward
        model.connector.forward = lambda patches: model.connector_norm(connect(patches))

    variants = set(filter(None, args.variant.split(",")))
    unknown = variants - {"count-total", "shift"}
    if unknown:
        parser.error(f"--variant: unknown {sorted(unknown)}")

    def ask(scene, category: str, rng: random.Random) -> tuple[str, str]:
        q, a = question(scene, world, category, rng)
        if category == "counting" and "count-total" in variants:
            return "how many objects are there", str(len(scene.objects))
        return q, a

    names = positions(world.grid_size)
    categories = args.categories.split(",")

    def page(scene, q: str, a: str, rng: random.Random) -> Document:
        filler = "the " * rng.randint(0, 8) if "shift" in variants else ""
        return Document(f"{filler}{IMAGE_PLACEHOLDER} {qa_words(q, a)}", (scene,), "i")

    schedule = [
        (int(until), part.split(","))
        for part, until in (p.split(":") for p in args.curriculum.split(";") if p)
    ]

    def batch(step: int):
        pool = next((cats for until, cats in schedule if step < until), categories)
        rng = random.Random(f"f/{step}")
        docs = []
        for _ in range(args.batch):
            scene = sample_scene(world, rng.getrandbits(60))
            q, a = ask(scene, rng.choice(pool), rng)
            docs.append(page(scene, q, a, rng))
        return make(docs)

    captured: list[torch.Tensor] = []

    sdpa = blocks.F.scaled_dot_product_attention

    def attention_probs(q, k, v, is_causal=False, attn_mask=None):
        if not is_causal:  # the image encoder's attention
            return sdpa(q, k, v, attn_mask=attn_mask)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, T, T)
        T = scores.shape[-1]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        probs = scores.softmax(-1)
        captured.append(probs)
        return probs @ v

    def heldout() -> dict[str, float]:
        """Accuracy per category; with --attention, also each layer's attention (the head that puts most there) from
        the position that predicts the answer onto the image token of the cell the question names."""
        model.eval()
        hits: dict[str, list[bool]] = defaultdict(list)
        # reading: the share of a sign's digits read right, which exact match hides
        digits_right: list[float] = []
        on_cell: dict[int, list[float]] = defaultdict(list)
        on_image: dict[int, list[float]] = defaultdict(list)
        if args.attention:
            blocks.F.scaled_dot_product_attention = attention_probs
        with torch.no_grad():
            for rep in range(3):
                rng = random.Random(f"held/{rep}")
                docs, asked, cells = [], [], []
                for i in range(20 * len(categories)):
                    scene = sample_scene(world, rng.getrandbits(60) + 10**12)
                    category = categories[i % len(categories)]
                    q, a = ask(scene, category, rng)
                    docs.append(page(scene, q, a, rng))
                    asked.append(category)
                    cells.append(
                        names.index(q.split()[-1]) if category in ("color", "shape", "size") else None
                    )
                b = make(docs)
                captured.clear()
                predicted = model(b.tokens, b.images).argmax(-1)
                for i, category in enumerate(asked):
                    answer = (
                        (b.targets[i] != -100).nonzero().flatten()[:-2]
                    )  # the answer's words: no "." nor eos
                    right = predicted[i, answer] == b.targets[i, answer]
                    hits[category].append(bool(right.all()))
                    if category == "reading":
                        digits_right.append(right.float().mean().item())
                    image_at = (b.tokens[i] == tokenizer.image_id).nonzero().flatten()  # in cell order
                    for layer, probs in enumerate(captured):
                        at_answer = probs[i, :, int(answer[0])]  # (H, T)
                        on_image[layer].append(at_answer[:, image_at].sum(-1).max().item())
                        if cells[i] is not None:
                            on_cell[layer].append(at_answer[:, image_at[cells[i]]].max().item())
        blocks.F.scaled_dot_product_attention = sdpa
        model.train()
        scores = {c: round(sum(v) / len(v), 2) for c, v in hits.items()}
        if digits_right:
            scores["reading_digits"] = round(sum(digits_right) / len(digits_right), 2)
        for layer, mass in on_cell.items():
            scores[f"cell{layer}"] = round(sum(mass) / len(mass), 2)
        for layer, mass in on_image.items():
            scores[f"image{layer}"] = round(sum(mass) / len(mass), 2)
        return scores

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0
    )
    # The recipe's schedule (warm-up, cosine decay to 10%) over this run's steps, or, with --constant-lr, the peak
    # rate held after warm-up as every run before 2026-11-27 had it (docs/reference-recipe.md, item 17: a loss spike).
    lr_schedule = dataclasses.replace(cfg.train, steps=args.steps, lr=args.lr, warmup_steps=50)
    rate = (
        (lambda s: min(1.0, (s + 1) / 50))
        if args.constant_lr
        else (lambda s: get_lr(s, lr_schedule) / args.lr)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    started = time.time()
    for step in range(args.steps):
        b = batch(step)
        loss = LOSSES["lm"](model(b.tokens, b.images), b.targets, z_loss_coef=0)["ce_loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        if (step + 1) % 250 == 0:
            print(step + 1, round(loss.item(), 3), heldout(), f"{time.time() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
