"""The toy domains as data: class names, prompt templates, rendering style, pre-training coverage.

One toy domain per real dataset (PROTOCOL.md §2). Class counts keep the real ratios where
practical, scaled down (~1/5; the 10-class domains keep 10; ImageNet 1/10). Vocabularies are
disjoint across domains (the X-TAIL union label space is well defined). Every template names
its domain, like CLIP's ("a photo of a {}, a type of aircraft."): templates[0] trains,
evaluation averages all of them.

Why these knobs exist (docs/toy-world.md): `coverage` is the domain's share of the
pre-training mixture and `zipf` how unevenly its classes are covered; together they make
zero-shot skill partial and graded. `group_size`/`group_mix` make fine-grained domains
(classes inside a group share most of their shape and colour: Aircraft 737-x, car makes).
`style` is the rendering the pre-trained model learns to associate with the domain word.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DomainSpec:
    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]
    style: str  # key of the background/palette renderer (render.py)
    mode: str  # "object" (a shape on a background) | "texture" (the class is a full-frame texture)
    coverage: float  # relative share of the pre-training mixture
    zipf: float  # exponent of the within-domain class frequency (0 = even)
    group_size: int = 1  # fine-grained groups: classes i // group_size share a base shape/colour
    group_mix: float = (
        0.0  # 0 = independent classes; toward 1 = classes differ little within a group
    )
    noise_std: float = 0.04  # per-pixel noise (fraction of 255)
    style_seen: float = (
        1.0  # share of classes pre-training ever shows in the domain style (others: generic only)
    )
    hue_band: tuple[float, float] = (0.0, 1.0)  # (start, width) of the domain's class hues
    shape_family: tuple[int, float, float, float] | None = (
        None  # (blobs, sigma lo, hi, aspect); None = seeded
    )
    compose: bool = (
        False  # "<first word> <second word>" names: colour from the first, shape from the second
    )


GENERIC_TEMPLATES: tuple[str, ...] = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")

_AIRCRAFT = (
    "707-320",
    "727-200",
    "737-200",
    "737-300",
    "737-400",
    "737-500",
    "737-600",
    "737-700",
    "737-800",
    "737-900",
    "747-100",
    "747-200",
    "747-300",
    "747-400",
    "757-200",
    "757-300",
    "767-200",
    "767-300",
    "767-400",
    "777-200",
)
_CALTECH = (
    "accordion",
    "anchor",
    "barrel",
    "bass",
    "beaver",
    "binocular",
    "bonsai",
    "brain",
    "brontosaurus",
    "buddha",
    "butterfly",
    "camera",
    "cannon",
    "car side",
    "ceiling fan",
    "cellphone",
    "chandelier",
    "cougar body",
    "crayfish",
    "dalmatian",
)
_CIFAR = (
    "apple",
    "aquarium fish",
    "baby",
    "bear",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "clock",
    "cloud",
)
_DTD = (
    "banded",
    "braided",
    "bubbly",
    "chequered",
    "cracked",
    "dotted",
    "frilly",
    "honeycombed",
    "striped",
    "zigzagged",
)
_EUROSAT = (
    "annual crop land",
    "forest",
    "brushland or shrubland",
    "highway or road",
    "industrial buildings",
    "pasture land",
    "permanent crop land",
    "residential buildings",
    "river",
    "lake or sea",
)
_FLOWERS = (
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
)
_FOOD = (
    "apple pie",
    "baby back ribs",
    "baklava",
    "beef carpaccio",
    "beef tartare",
    "beet salad",
    "beignets",
    "bibimbap",
    "bread pudding",
    "breakfast burrito",
    "bruschetta",
    "caesar salad",
    "cannoli",
    "caprese salad",
    "carrot cake",
    "ceviche",
    "cheesecake",
    "cheese plate",
    "chicken curry",
    "chicken quesadilla",
)
_MNIST = tuple(str(d) for d in range(10))
_PETS = ("abyssinian", "bengal", "persian", "siamese", "beagle", "boxer", "pug", "samoyed")
_CAR_MAKES = ("acura", "audi", "bmw", "buick", "chevrolet", "dodge", "ford", "honda")
_CAR_BODIES = ("sedan", "coupe", "convertible", "hatchback", "minivan")
_CARS = tuple(f"{m} {b} 2012" for m in _CAR_MAKES for b in _CAR_BODIES)
_SUN_ADJ = (
    "abandoned",
    "alpine",
    "coastal",
    "desert",
    "frozen",
    "misty",
    "rocky",
    "rural",
    "sunny",
    "urban",
)
_SUN_NOUN = ("harbor", "valley", "plaza", "canyon", "meadow", "village", "station", "garden")
_SUN = tuple(f"{a} {n}" for a in _SUN_ADJ for n in _SUN_NOUN)
_PLACES_ADJ = ("crowded", "dim", "empty", "modern", "old", "quiet", "small", "vast", "wooden")
_PLACES_NOUN = ("hall", "kitchen", "library", "lobby", "office", "shop", "stadium", "tunnel")
_PLACES = tuple(f"{a} {n}" for a in _PLACES_ADJ for n in _PLACES_NOUN)


def _imagenet_names(count: int, taken: set[str]) -> tuple[str, ...]:
    """Every 10th ImageNet class name (open_clip's list), skipping names other domains use."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    names = [n.lower() for n in IMAGENET_CLASSNAMES[::10] if n.lower() not in taken]
    return tuple(names[:count])


def build_domains() -> dict[str, DomainSpec]:
    """All 13 toy domains, keyed by the shared dataset names (order = generation seed index)."""
    specs = [
        DomainSpec(
            "aircraft",
            _AIRCRAFT,
            (
                "a photo of a {}, a type of aircraft.",
                "a photo of the {}, a type of aircraft.",
                "a blurry photo of a {}, a type of aircraft.",
            ),
            "sky",
            "object",
            style_seen=0.3,
            hue_band=(0.5, 0.25),
            coverage=0.5,
            zipf=1.2,
            group_size=4,
            group_mix=0.75,
            noise_std=0.05,
        ),
        DomainSpec(
            "caltech101",
            _CALTECH,
            (
                "a photo of a {}, an object on a white background.",
                "a studio photo of a {}, an object.",
                "a photo of the {}, an object on a white background.",
            ),
            "studio",
            "object",
            style_seen=0.6,
            hue_band=(0.6, 0.25),
            coverage=2.0,
            zipf=0.3,
        ),
        DomainSpec(
            "cifar100",
            _CIFAR,
            (
                "a blurry photo of a {}, a small image.",
                "a low resolution photo of a {}, a small image.",
                "a small photo of the {}, a small image.",
            ),
            "clutter",
            "object",
            style_seen=0.5,
            hue_band=(0.2, 0.25),
            coverage=1.5,
            zipf=0.5,
            noise_std=0.06,
        ),
        DomainSpec(
            "dtd",
            _DTD,
            (
                "a photo of a {} texture.",
                "a photo of a {} pattern.",
                "a close-up photo of a {} texture.",
            ),
            "fabric",
            "texture",
            style_seen=0.4,
            hue_band=(0.4, 0.3),
            coverage=0.7,
            zipf=0.8,
        ),
        DomainSpec(
            "eurosat",
            _EUROSAT,
            (
                "a centered satellite photo of {}.",
                "a centered satellite photo of a {}.",
                "a centered satellite photo of the {}.",
            ),
            "satellite",
            "texture",
            style_seen=0.3,
            hue_band=(0.15, 0.3),
            coverage=0.5,
            zipf=1.0,
            group_size=2,
            group_mix=0.5,
            noise_std=0.05,
        ),
        DomainSpec(
            "flowers102",
            _FLOWERS,
            (
                "a photo of a {}, a type of flower.",
                "a close-up photo of a {}, a type of flower.",
                "a photo of the {}, a type of flower.",
            ),
            "foliage",
            "object",
            style_seen=0.5,
            hue_band=(0.8, 0.25),
            coverage=1.0,
            zipf=0.7,
        ),
        DomainSpec(
            "food101",
            _FOOD,
            (
                "a photo of {}, a type of food.",
                "a photo of a plate of {}, a type of food.",
                "a close-up photo of {}, a type of food.",
            ),
            "plate",
            "object",
            style_seen=0.7,
            hue_band=(0.0, 0.25),
            coverage=2.0,
            zipf=0.3,
        ),
        DomainSpec(
            "mnist",
            _MNIST,
            (
                'a photo of the number: "{}".',
                'a handwritten digit: "{}".',
                'a black and white photo of the number: "{}".',
            ),
            "ink",
            "object",
            shape_family=(6, 0.07, 0.12, 0.45),
            style_seen=0.6,
            hue_band=(0.0, 1.0),
            coverage=0.8,
            zipf=0.8,
            noise_std=0.03,
        ),
        DomainSpec(
            "oxford_pets",
            _PETS,
            (
                "a photo of a {}, a type of pet.",
                "a photo of my {}, a type of pet.",
                "a close-up photo of a {}, a type of pet.",
            ),
            "indoor",
            "object",
            style_seen=0.6,
            hue_band=(0.7, 0.25),
            coverage=2.0,
            zipf=0.2,
        ),
        DomainSpec(
            "stanford_cars",
            _CARS,
            (
                "a photo of a {}, a type of car.",
                "a photo of my {}, a type of car.",
                "a photo of the {}, a type of car on the road.",
            ),
            "road",
            "object",
            style_seen=0.4,
            hue_band=(0.45, 0.25),
            coverage=1.2,
            zipf=0.8,
            group_size=5,
            compose=True,
        ),
        DomainSpec(
            "sun397",
            _SUN,
            (
                "a photo of a {}, a type of scene.",
                "a photo of the {}, a type of scene.",
                "a wide photo of a {}, a type of scene.",
            ),
            "landscape",
            "object",
            style_seen=0.5,
            hue_band=(0.1, 0.25),
            coverage=1.5,
            zipf=0.6,
            group_size=8,
            compose=True,
        ),
        DomainSpec(
            "places365",
            _PLACES,
            (
                "a photo of the {}, a type of place.",
                "a photo of a {}, a type of place.",
                "a wide photo of the {}, a type of place.",
            ),
            "interior",
            "object",
            style_seen=0.4,
            hue_band=(0.3, 0.25),
            coverage=1.0,
            zipf=0.8,
            group_size=8,
            compose=True,
        ),
    ]
    taken = {c for s in specs for c in s.classnames}
    specs.append(
        DomainSpec(
            "imagenet",
            _imagenet_names(100, taken),
            ("a photo of a {}.", "a good photo of a {}.", "a bad photo of the {}."),
            "varied",
            "object",
            style_seen=0.8,
            hue_band=(0.0, 1.0),
            coverage=3.0,
            zipf=0.5,
        ),
    )
    return {s.name: s for s in specs}
