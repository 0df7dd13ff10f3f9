"""Scenes of the generated world: sampling, rendering with PIL, and captioning.

A scene is one or two groups of objects (object, colour, size, count) on a
background, with a spatial relation between the groups. Rendering draws each object
as its own shape and fill style, so image features carry the concepts; captions come
from a small grammar with synonyms, inflections, paraphrased word orders and dropped
attributes, so the text side needs lemmatising and grouping as real captions do.
Everything is a pure function of a ``numpy`` Generator, hence deterministic.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from storage.errors import InputError
from webvse_world.concepts import BACKGROUNDS, COLOURS, COUNT_WORDS, OBJECTS, RELATIONS, SIZES, ObjectConcept

IMAGE_SIZE = 256


@dataclass(frozen=True)
class Group:
    obj: ObjectConcept
    colour: str
    size: str
    count: int


@dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]
    background: str
    relation: str

    @property
    def objects(self) -> list[str]:
        return [g.obj.name for g in self.groups]

    def concepts(self) -> dict[str, object]:
        """Ground truth, stored beside the captions for per-concept analysis."""
        return {
            "objects": self.objects,
            "colours": [g.colour for g in self.groups],
            "sizes": [g.size for g in self.groups],
            "counts": [g.count for g in self.groups],
            "background": self.background,
            "relation": self.relation if len(self.groups) > 1 else "",
        }


def sample_group(rng: np.random.Generator, obj: ObjectConcept) -> Group:
    return Group(
        obj, str(rng.choice(list(COLOURS))), str(rng.choice(list(SIZES))), int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))
    )


def sample_scene(
    rng: np.random.Generator, object_probs: np.ndarray, first: ObjectConcept | None = None, second_p: float = 0.6
) -> Scene:
    """A scene whose first object is ``first`` (or drawn from ``object_probs``)."""
    first_index = OBJECTS.index(first) if first is not None else int(rng.choice(len(OBJECTS), p=object_probs))
    groups = [sample_group(rng, OBJECTS[first_index])]
    if rng.random() < second_p:
        probs = object_probs.copy()
        probs[first_index] = 0
        groups.append(sample_group(rng, OBJECTS[int(rng.choice(len(OBJECTS), p=probs / probs.sum()))]))
    return Scene(tuple(groups), str(rng.choice(list(BACKGROUNDS))), str(rng.choice(list(RELATIONS))))


# --------------------------------------------------------------------------- rendering
def _noise(rng: np.random.Generator, base: tuple[int, int, int], spread: int) -> np.ndarray:
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int16)
    img[:] = base
    img += rng.integers(-spread, spread + 1, size=img.shape, dtype=np.int16)
    return img


def _background(rng: np.random.Generator, name: str) -> Image.Image:
    s = IMAGE_SIZE
    if name == "beach":
        img = _noise(rng, (225, 200, 150), 18)
        img[: s // 3] = _noise(rng, (120, 180, 235), 6)[: s // 3]
    elif name == "grass":
        img = _noise(rng, (60, 140, 50), 35)
    elif name == "snow":
        img = _noise(rng, (238, 242, 250), 10)
    elif name == "street":
        img = _noise(rng, (105, 105, 110), 12)
        img[s // 2 - 3 : s // 2 + 3, ::32] = 250
        for x in range(0, s, 32):
            img[s // 2 - 3 : s // 2 + 3, x : x + 16] = 245
    elif name == "room":
        img = _noise(rng, (225, 210, 180), 6)
        img[2 * s // 3 :] = _noise(rng, (140, 95, 55), 10)[2 * s // 3 :]
    elif name == "water":
        img = _noise(rng, (40, 100, 180), 12)
        for y in range(8, s, 24):
            img[y : y + 2] += 45
    elif name == "sky":
        grad = np.linspace(150, 230, s, dtype=np.int16)[:, None]
        img = _noise(rng, (0, 0, 0), 4)
        img[..., 0] += grad - 60
        img[..., 1] += grad - 10
        img[..., 2] += 245
    else:  # forest
        img = _noise(rng, (30, 85, 35), 20)
        for x in rng.integers(0, s, 7):
            img[:, x : x + 6] = (90, 60, 30)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def regular(n: int, radius_of: Callable[[int], float] = lambda i: 1.0) -> list[tuple[float, float]]:
        return [
            (
                cx + r * radius_of(i) * math.cos(angle + 2 * math.pi * i / n),
                cy + r * radius_of(i) * math.sin(angle + 2 * math.pi * i / n),
            )
            for i in range(n)
        ]

    if shape == "triangle":
        return regular(3)
    if shape == "square":
        return regular(4)
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.6 * r, cy), (cx, cy + r), (cx - 0.6 * r, cy)]
    if shape == "pentagon":
        return regular(5)
    if shape == "hexagon":
        return regular(6)
    if shape == "star":
        return regular(10, lambda i: 1.0 if i % 2 == 0 else 0.45)
    if shape == "cross":
        w = r / 3
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w), (cx + w, cy + w),
                (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w), (cx - r, cy - w), (cx - w, cy - w)]  # fmt: skip
    if shape == "bar":
        return [(cx - r, cy - r / 3), (cx + r, cy - r / 3), (cx + r, cy + r / 3), (cx - r, cy + r / 3)]
    if shape == "half":
        return [(cx + r * math.cos(t), cy + r * 0.2 + r * 0.8 * math.sin(t)) for t in np.linspace(0, math.pi, 12)] + [
            (cx - r, cy)
        ]
    raise InputError(f"unknown shape {shape!r}")


def _draw_object(
    draw: ImageDraw.ImageDraw, obj: ObjectConcept, rgb: tuple[int, int, int], cx: float, cy: float, r: float, angle: float
) -> None:
    dark = tuple(max(0, int(c * 0.45)) for c in rgb)
    outline = dark if obj.style != "ring" else rgb
    width = max(2, int(r / 4)) if obj.style == "ring" else 2
    fill = None if obj.style == "ring" else rgb
    box = (cx - r, cy - r * (0.6 if obj.shape == "ellipse" else 1), cx + r, cy + r * (0.6 if obj.shape == "ellipse" else 1))
    if obj.shape in ("circle", "ellipse"):
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    else:
        draw.polygon(_polygon(obj.shape, cx, cy, r, angle), fill=fill, outline=outline, width=width)
    if obj.style == "striped":
        for offset in np.arange(-r, r, max(3.0, r / 3)):
            draw.line([(cx + offset, cy - r * 0.7), (cx + offset + r * 0.3, cy + r * 0.7)], fill=dark, width=max(2, int(r / 8)))


def _region(relation: str, index: int, groups: int) -> tuple[float, float, float, float]:
    """The part of the frame a group is drawn in: (x0, y0, x1, y1) as fractions."""
    if groups == 1:
        return (0.15, 0.15, 0.85, 0.85)
    if relation == "next to":
        return (0.1, 0.25, 0.48, 0.8) if index == 0 else (0.52, 0.25, 0.9, 0.8)
    top = (0.15, 0.08, 0.85, 0.45)
    bottom = (0.15, 0.55, 0.85, 0.92)
    first_on_top = relation == "above"
    return (top if first_on_top else bottom) if index == 0 else (bottom if first_on_top else top)


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """The scene as a 256x256 RGB image."""
    image = _background(rng, scene.background)
    draw = ImageDraw.Draw(image)
    s = IMAGE_SIZE
    for index, group in enumerate(scene.groups):
        x0, y0, x1, y1 = _region(scene.relation, index, len(scene.groups))
        radius = SIZES[group.size][1] * s / (1.0 + 0.35 * (group.count - 1)) / 2 * (0.85 + 0.3 * rng.random())
        for k in range(group.count):
            cx = s * (x0 + (x1 - x0) * (k + 0.5) / group.count) + rng.normal(0, 4)
            cy = s * (y0 + y1) / 2 + rng.normal(0, s * (y1 - y0) / 8)
            _draw_object(draw, group.obj, COLOURS[group.colour][1], cx, cy, radius, float(rng.uniform(0, math.pi)))
    return image.filter(ImageFilter.GaussianBlur(0.6))


def jpeg_bytes(image: Image.Image, quality: int = 88) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_jpeg(path: Path, image: Image.Image) -> None:
    """Write a rendered image plainly, without an atomic write's fsyncs: what commits generated
    images is the file their generator writes last (``dataset_world.json``, ``photos.parquet``,
    and the world's marker after both); a crash before it generates them all again. The fsyncs
    only cost time: the default world in 17 s instead of 22 (2 cores)."""
    path.write_bytes(jpeg_bytes(image))


# --------------------------------------------------------------------------- captions
def pluralise(word: str) -> str:
    irregular = {"fish": "fish", "sheep": "sheep", "trout": "trout", "lamb": "lambs", "watch": "watches", "coach": "coaches"}
    if word in irregular:
        return irregular[word]
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


_BG_PREPOSITION = {
    "beach": "on",
    "grass": "on",
    "snow": "in",
    "street": "on",
    "room": "in",
    "water": "in",
    "sky": "in",
    "forest": "in",
}
_VERBS = ("sitting", "standing", "resting", "lying", "waiting")
_INVERSE = {"next to": "next to", "above": "below", "below": "above"}


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _group_phrase(rng: np.random.Generator, group: Group) -> str:
    noun = _pick(rng, group.obj.synonyms)
    words = [_pick(rng, COUNT_WORDS[group.count])]
    if rng.random() < 0.5:
        words.append(_pick(rng, SIZES[group.size][0]))
    if rng.random() < 0.8:
        words.append(_pick(rng, COLOURS[group.colour][0]))
    words.append(noun if group.count == 1 else pluralise(noun))
    return " ".join(words)


def _be(group: Group) -> str:
    return "is" if group.count == 1 else "are"


def captions(scene: Scene, rng: np.random.Generator, count: int = 5) -> list[str]:
    """``count`` different captions of the scene."""
    g1 = scene.groups[0]
    bg_word = _pick(rng, BACKGROUNDS[scene.background])
    where = f"{_BG_PREPOSITION[scene.background]} the {bg_word}"
    pair = len(scene.groups) > 1
    rel = _pick(rng, RELATIONS[scene.relation]) if pair else ""

    def both(first: Group, second: Group, relation: str) -> str:
        return f"{_group_phrase(rng, first)} {relation} {_group_phrase(rng, second)}"

    templates = [
        lambda: (both(g1, scene.groups[1], rel) if pair else _group_phrase(rng, g1)) + f" {where}",
        lambda: f"there {_be(g1)} " + (both(g1, scene.groups[1], rel) if pair else _group_phrase(rng, g1)) + f" {where}",
        lambda: f"{where}, " + (both(g1, scene.groups[1], rel) if pair else f"{_group_phrase(rng, g1)} {_pick(rng, _VERBS)}"),
        lambda: (
            "a photo of "
            + (f"{_group_phrase(rng, g1)} and {_group_phrase(rng, scene.groups[1])}" if pair else _group_phrase(rng, g1))
            + f" {where}"
        ),
        lambda: (
            (
                both(scene.groups[1], g1, _pick(rng, RELATIONS[_INVERSE[scene.relation]]))
                if pair
                else f"{_group_phrase(rng, g1)} in a picture"
            )
            + f" {where}"
        ),
        lambda: f"{_group_phrase(rng, g1)} {_be(g1)} {_pick(rng, _VERBS)} {where}",
        lambda: (
            f"{bg_word} scene with "
            + (f"{_group_phrase(rng, g1)} and {_group_phrase(rng, scene.groups[1])}" if pair else _group_phrase(rng, g1))
        ),
    ]
    order = rng.permutation(len(templates))[:count]
    return [_sentence(templates[i]()) for i in order]


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text[0].upper() + text[1:] + "."
