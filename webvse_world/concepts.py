"""The concepts of the generated world: objects, colours, sizes, counts, backgrounds, relations.

Each concept has the canonical word the keyword step should find after lemmatising
and grouping, plus surface variants (synonyms, inflections) that captions use so that
lemmatising and grouping similar words actually matter. Objects also say how they
are drawn (a shape and a fill style), so that a CNN can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ObjectConcept:
    name: str
    synonyms: tuple[str, ...]
    plural: str
    shape: str
    style: str  # solid | striped | ring


def _obj(name: str, synonyms: tuple[str, ...], plural: str, shape: str, style: str) -> ObjectConcept:
    return ObjectConcept(name, synonyms, plural, shape, style)


OBJECTS: tuple[ObjectConcept, ...] = (
    _obj("dog", ("dog", "puppy", "pup"), "dogs", "circle", "solid"),
    _obj("cat", ("cat", "kitten", "kitty"), "cats", "triangle", "solid"),
    _obj("car", ("car", "automobile", "vehicle"), "cars", "square", "solid"),
    _obj("bird", ("bird", "sparrow"), "birds", "diamond", "solid"),
    _obj("ball", ("ball", "football"), "balls", "circle", "ring"),
    _obj("boat", ("boat", "ship", "sailboat"), "boats", "half", "solid"),
    _obj("tree", ("tree", "oak"), "trees", "triangle", "striped"),
    _obj("house", ("house", "home", "cottage"), "houses", "pentagon", "solid"),
    _obj("flower", ("flower", "blossom", "daisy"), "flowers", "star", "solid"),
    _obj("horse", ("horse", "pony"), "horses", "hexagon", "solid"),
    _obj("bicycle", ("bicycle", "bike"), "bicycles", "circle", "striped"),
    _obj("kite", ("kite",), "kites", "diamond", "ring"),
    _obj("umbrella", ("umbrella", "parasol"), "umbrellas", "half", "striped"),
    _obj("chair", ("chair", "seat"), "chairs", "square", "ring"),
    _obj("cup", ("cup", "mug"), "cups", "square", "striped"),
    _obj("fish", ("fish", "trout"), "fish", "ellipse", "solid"),
    _obj("sheep", ("sheep", "lamb"), "sheep", "ellipse", "striped"),
    _obj("clock", ("clock", "watch"), "clocks", "hexagon", "ring"),
    _obj("train", ("train", "locomotive"), "trains", "bar", "solid"),
    _obj("bus", ("bus", "coach"), "buses", "bar", "striped"),
    _obj("guitar", ("guitar",), "guitars", "ellipse", "ring"),
    _obj("cake", ("cake", "pie"), "cakes", "pentagon", "striped"),
    _obj("lamp", ("lamp", "lantern"), "lamps", "star", "ring"),
    _obj("frisbee", ("frisbee", "disc"), "frisbees", "pentagon", "ring"),
    _obj("giraffe", ("giraffe",), "giraffes", "star", "striped"),
    _obj("zebra", ("zebra",), "zebras", "hexagon", "striped"),
    _obj("pizza", ("pizza",), "pizzas", "triangle", "ring"),
    _obj("airplane", ("airplane", "plane", "jet"), "airplanes", "cross", "solid"),
    _obj("elephant", ("elephant",), "elephants", "cross", "striped"),
    _obj("motorcycle", ("motorcycle", "motorbike"), "motorcycles", "cross", "ring"),
)

COLOURS: dict[str, tuple[tuple[str, ...], tuple[int, int, int]]] = {
    "red": (("red", "crimson"), (210, 30, 35)),
    "blue": (("blue", "navy"), (30, 70, 200)),
    "green": (("green",), (40, 160, 60)),
    "yellow": (("yellow", "golden"), (240, 210, 30)),
    "white": (("white",), (245, 245, 245)),
    "black": (("black", "dark"), (20, 20, 20)),
    "orange": (("orange",), (245, 140, 20)),
    "purple": (("purple", "violet"), (130, 40, 160)),
    "pink": (("pink",), (240, 130, 180)),
    "brown": (("brown",), (120, 75, 35)),
}

SIZES: dict[str, tuple[tuple[str, ...], float]] = {
    "small": (("small", "little", "tiny"), 0.16),
    "large": (("large", "big", "huge"), 0.30),
}

COUNT_WORDS: dict[int, tuple[str, ...]] = {1: ("a", "one"), 2: ("two", "a pair of"), 3: ("three", "several")}

BACKGROUNDS: dict[str, tuple[str, ...]] = {
    "beach": ("beach", "shore", "sand"),
    "grass": ("grass", "lawn", "field"),
    "snow": ("snow", "snowfield"),
    "street": ("street", "road"),
    "room": ("room", "kitchen", "living room"),
    "water": ("water", "lake", "sea"),
    "sky": ("sky",),
    "forest": ("forest", "woods"),
}

RELATIONS: dict[str, tuple[str, ...]] = {
    "next to": ("next to", "beside", "near"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}


def zipf_weights(count: int, exponent: float = 1.1) -> np.ndarray:
    """Probabilities ~ 1 / rank^exponent: the long tail of real caption corpora."""
    weights = 1.0 / np.arange(1, count + 1) ** exponent
    return weights / weights.sum()
