"""A small synthetic ``*_precomp`` world: features, captions, tag vectors, web pairs.

Until the rendered offline world (images + Flickr server) drives the demo, this is
what the README's first command trains on, and what tests use as separable data.
It mimics the paper's setting in miniature:

* a scene = two objects (nouns) on a coloured background; its feature vector is the
  sum of the objects' and the colour's prototypes plus noise (a stand-in for CNN
  features);
* 5 captions per scene from templates with synonyms ("dog"/"puppy");
* object frequencies follow a Zipf law in train, while val/test draw uniformly, so
  rare objects are scarce in training but matter at test time;
* web pairs (for Stage II) show every object often, tagged with the object words
  (plus noise tags), each found by the keyword of its first object, ranked by its
  frequency in the training captions.

Deterministic from ``seed``; test and val scenes are distinct (objects, colour) triples,
so a caption identifies its image and R@1 can approach 100.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from webvse_model.datasets.precomp import PrecompSplit, PrecompWeb, write_precomp_split, write_precomp_web

OBJECTS: dict[str, tuple[str, ...]] = {
    "dog": ("dog", "puppy"),
    "cat": ("cat", "kitten"),
    "horse": ("horse", "pony"),
    "bird": ("bird", "sparrow"),
    "car": ("car", "automobile"),
    "bike": ("bike", "bicycle"),
    "boat": ("boat", "ship"),
    "tree": ("tree", "oak"),
    "man": ("man", "guy"),
    "woman": ("woman", "lady"),
    "child": ("child", "kid"),
    "ball": ("ball", "football"),
    "table": ("table", "desk"),
    "chair": ("chair", "seat"),
    "cup": ("cup", "mug"),
    "train": ("train", "locomotive"),
    "kite": ("kite", "glider"),
    "sheep": ("sheep", "lamb"),
    "cow": ("cow", "calf"),
    "plane": ("plane", "airplane"),
}
COLOURS: tuple[str, ...] = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple")
TEMPLATES: tuple[str, ...] = (
    "a {a} and a {b} on a {c} background",
    "there is a {b} beside a {a} in front of {c}",
    "{c} scene with a {a} and a {b}",
    "a photo of a {a} next to a {b} , all {c}",
    "the {b} and the {a} stand against {c}",
)


@dataclass(frozen=True)
class SyntheticSizes:
    train: int = 1500
    val: int = 100
    test: int = 100
    web: int = 3000
    feature_dim: int = 256
    tag_dim: int = 50
    noise: float = 0.3


def _scene_features(
    rng: np.random.Generator, protos: np.ndarray, colours: np.ndarray, scenes: np.ndarray, noise: float
) -> np.ndarray:
    feats = protos[scenes[:, 0]] + protos[scenes[:, 1]] + colours[scenes[:, 2]]
    feats += noise * rng.standard_normal(feats.shape)
    return np.maximum(feats, 0).astype(np.float32)  # CNN features after ReLU are non-negative


def _captions(rng: np.random.Generator, scenes: np.ndarray, names: list[str]) -> list[str]:
    out = []
    for a, b, c in scenes:
        for template in TEMPLATES:
            out.append(template.format(a=rng.choice(OBJECTS[names[a]]), b=rng.choice(OBJECTS[names[b]]), c=COLOURS[c]))
    return out


def generate_synthetic_precomp(folder: str | Path, sizes: SyntheticSizes = SyntheticSizes(), seed: int = 0) -> Path:
    """Write ``train/dev/test`` precomp splits plus web pairs into ``folder``."""
    rng = np.random.default_rng(seed)
    names = list(OBJECTS)
    n_obj = len(names)
    protos = np.abs(rng.standard_normal((n_obj, sizes.feature_dim))) * (rng.random((n_obj, sizes.feature_dim)) < 0.2) * 3
    colours = (
        np.abs(rng.standard_normal((len(COLOURS), sizes.feature_dim))) * (rng.random((len(COLOURS), sizes.feature_dim)) < 0.2) * 2
    )
    word_vec = rng.standard_normal((n_obj + len(COLOURS), sizes.tag_dim))

    zipf = 1.0 / np.arange(1, n_obj + 1)
    zipf /= zipf.sum()
    all_scenes = np.array([(a, b, c) for a, b in combinations(range(n_obj), 2) for c in range(len(COLOURS))])
    held = rng.permutation(len(all_scenes))[: sizes.val + sizes.test]
    val_scenes, test_scenes = all_scenes[held[: sizes.val]], all_scenes[held[sizes.val :]]

    first = rng.choice(n_obj, size=sizes.train, p=zipf)
    second = (first + 1 + rng.choice(n_obj - 1, size=sizes.train, p=(zipf[1:] / zipf[1:].sum()))) % n_obj
    train_scenes = np.stack([first, second, rng.integers(0, len(COLOURS), sizes.train)], axis=1)

    def tags_of(scenes: np.ndarray) -> np.ndarray:
        return ((word_vec[scenes[:, 0]] + word_vec[scenes[:, 1]] + word_vec[n_obj + scenes[:, 2]]) / 3).astype(np.float32)

    root = Path(folder)
    for split, scenes in (("train", train_scenes), ("dev", val_scenes), ("test", test_scenes)):
        feats = _scene_features(rng, protos, colours, scenes, sizes.noise)
        write_precomp_split(root, PrecompSplit(split, feats, _captions(rng, scenes, names), 5, tags_of(scenes)))

    counts = np.bincount(train_scenes[:, :2].ravel(), minlength=n_obj)
    rank_of = np.empty(n_obj, dtype=np.int64)
    rank_of[np.argsort(-counts, kind="stable")] = np.arange(1, n_obj + 1)
    web_first = rng.integers(0, n_obj, sizes.web)
    web_second = (web_first + rng.integers(1, n_obj, sizes.web)) % n_obj
    web_scenes = np.stack([web_first, web_second, rng.integers(0, len(COLOURS), sizes.web)], axis=1)
    web_tags = tags_of(web_scenes) + 0.2 * rng.standard_normal((sizes.web, sizes.tag_dim)).astype(np.float32)
    web = PrecompWeb(_scene_features(rng, protos, colours, web_scenes, sizes.noise), web_tags, rank_of[web_first])
    write_precomp_web(root, web)
    return root
