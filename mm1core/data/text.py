"""The language of the world: alt-text captions, complete re-captions, questions with answers, text-only tasks.

Two kinds of caption, as in the paper's data: `alt_caption` is short and partial (web alt-text: a few of the things in
the image, in one of several phrasings), `recaption` describes everything (the synthetic VeCap captions). Questions
come in categories that need different things from the model: reading fine glyphs needs resolution, naming what sits
in a given cell needs visual tokens that keep the layout, counting needs the whole image. Every function is a pure
function of its scene and its `random.Random`, so data and evaluation sets are reproducible.
"""

from __future__ import annotations

import random

from mm1core.data.world import COLORS, SHAPES, SIZES, Scene, SceneObject, WorldConfig, positions

__all__ = [
    "QUESTION_CATEGORIES",
    "alt_caption",
    "arithmetic_question",
    "caption_references",
    "longest_words",
    "qa_words",
    "question",
    "recaption",
    "world_vocabulary",
]

QUESTION_CATEGORIES = ("reading", "color", "shape", "size", "counting", "position", "relation")
_RELATIONS = ("left of", "right of", "above", "below")
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def world_vocabulary(world: WorldConfig) -> list[str]:
    """Every word any text about this world can use."""
    words = "the a an at is are of and that there objects object sign signs reads read . ? : scene".split()
    words += "what color shape size how many where does question answer yes no plus".split()
    words += [w for relation in _RELATIONS for w in relation.split()]
    words += list("0123456789") + list(COLORS) + list(SHAPES) + list(SIZES) + list(positions(world.grid_size))
    return sorted(set(words))


def _spell(text: str) -> str:
    """Digits as separate words: the word-level vocabulary holds digits, not numbers."""
    return " ".join(text)


def _name(obj: SceneObject, scene: Scene) -> str | None:
    """The shortest description that picks out `obj` among the scene's objects, if any does."""
    if sum((o.color, o.shape) == (obj.color, obj.shape) for o in scene.objects) == 1:
        return f"{obj.color} {obj.shape}"
    if sum((o.size, o.color, o.shape) == (obj.size, obj.color, obj.shape) for o in scene.objects) == 1:
        return f"{obj.size} {obj.color} {obj.shape}"
    return None


def _object_phrase(obj: SceneObject) -> str:
    return f"a {obj.size} {obj.color} {obj.shape}"


def alt_caption(scene: Scene, world: WorldConfig, rng: random.Random) -> str:
    """A short caption naming a few things in the image, in one of several phrasings."""
    names = positions(world.grid_size)
    objects = list(scene.objects)
    rng.shuffle(objects)
    phrasings = []
    if objects:
        listed = objects[: rng.randint(1, min(3, len(objects)))]
        phrasings.append(" and ".join(_object_phrase(o) for o in listed) + " .")
        placed = objects[: rng.randint(1, min(2, len(objects)))]
        phrasings.append(" ".join(f"{o.color} {o.shape} at {names[o.cell]} ." for o in placed))
    sign = rng.choice(scene.signs)
    phrasings.append(f"a sign that reads {_spell(sign.text)} .")
    noun = "sign" if len(scene.signs) == 1 else "signs"
    phrasings.append(f"{len(scene.objects)} objects and {len(scene.signs)} {noun} .")
    return rng.choice(phrasings)


def caption_references(scene: Scene, world: WorldConfig, count: int = 5) -> list[str]:
    """Several alt-text captions of one scene (as COCO has five annotators), seeded by the scene itself."""
    rng = random.Random(f"references/{scene.jitter_seed}")
    return [alt_caption(scene, world, rng) for _ in range(count)]


def _relation(a: SceneObject, b: SceneObject, world: WorldConfig) -> str | None:
    """The relation from a to b along the axis on which their cells differ (columns first)."""
    (ra, ca), (rb, cb) = divmod(a.cell, world.grid_size), divmod(b.cell, world.grid_size)
    if ca < cb:
        return "left of"
    if ca > cb:
        return "right of"
    return "above" if ra < rb else "below"


def recaption(scene: Scene, world: WorldConfig, rng: random.Random) -> str:
    """A complete description: counts, every object with its place, every sign, and one relation."""
    names = positions(world.grid_size)
    noun = "sign" if len(scene.signs) == 1 else "signs"
    parts = [f"there are {len(scene.objects)} objects and {len(scene.signs)} {noun} ."]
    parts += [f"at {names[o.cell]} {_object_phrase(o)} ." for o in scene.objects]
    parts += [f"the sign at {names[s.cell]} reads {_spell(s.text)} ." for s in scene.signs]
    pairs = [
        (a, b)
        for a in scene.objects
        for b in scene.objects
        if a is not b and _name(a, scene) and _name(b, scene)
    ]
    if pairs:
        a, b = rng.choice(pairs)
        parts.append(f"the {_name(a, scene)} is {_relation(a, b, world)} the {_name(b, scene)} .")
    return " ".join(parts)


def question(scene: Scene, world: WorldConfig, category: str, rng: random.Random) -> tuple[str, str]:
    """(question words, answer words) of one category about the scene."""
    names = positions(world.grid_size)
    if category == "reading":
        sign = rng.choice(scene.signs)
        return f"what does the sign at {names[sign.cell]} read", _spell(sign.text)
    if category in ("color", "shape", "size"):
        obj = rng.choice(scene.objects)
        return f"what {category} is the object at {names[obj.cell]}", getattr(obj, category)
    if category == "counting":
        if rng.random() < 0.5:
            return "how many objects are there", str(len(scene.objects))
        color = rng.choice(list(COLORS))
        return f"how many {color} objects are there", str(sum(o.color == color for o in scene.objects))
    named = [o for o in scene.objects if _name(o, scene)]
    if category == "position":
        obj = rng.choice(named or list(scene.objects))
        return f"where is the {_name(obj, scene) or obj.shape}", names[obj.cell]
    if category == "relation":
        if len(named) < 2:  # no two objects can be named apart: ask what the grid decides instead
            return question(scene, world, "counting", rng)
        a, b = rng.sample(named, 2)
        truth = _relation(a, b, world)
        asked = truth if rng.random() < 0.5 else _OPPOSITE[truth]
        answer = "yes" if asked == truth else "no"
        return f"is the {_name(a, scene)} {asked} the {_name(b, scene)}", answer
    raise ValueError(f"unknown question category {category!r}; known: {', '.join(QUESTION_CATEGORIES)}")


def qa_words(question_text: str, answer: str | None) -> str:
    """The one question-answer format of the world; answer None leaves the prompt open for the model."""
    prompt = f"question {question_text} ? answer"
    return prompt if answer is None else f"{prompt} {answer} ."


def arithmetic_question(rng: random.Random) -> tuple[str, str]:
    """A general text task that needs no image: adding two numbers, digit by digit."""
    a, b = rng.randrange(100), rng.randrange(100)
    return f"what is {_spell(str(a))} plus {_spell(str(b))}", _spell(str(a + b))


def longest_words(world: WorldConfig) -> dict[str, int]:
    """Upper bounds on the words of each kind of text, for checking that sequences fit max_seq_len."""
    n, m, length = world.max_objects, world.max_signs, world.sign_length
    recap = 7 + 7 * n + (5 + length) * m + 12
    qa = 4 + 12 + 2 + length + 1  # "question" ... "?" "answer" <answer> "."
    return {
        "alt_caption": max(3 * 5 + 3, 2 * 6, 4 + length, 6),
        "recaption": recap,
        "qa": qa,
        "text_document": 2 + recap + qa,
    }
