"""The testbed's fine-grained taxonomy: families of sibling species differing in one part.

Each family has a base look (a colour for every part, a wing pattern, a tail shape, a beak shape)
and one *varying trait*; its three siblings take three different values of that trait and agree
on everything else. So any two siblings differ in exactly one part, the ground truth that
Finer-CAM should find.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 35),
    "orange": (240, 140, 25),
    "yellow": (240, 215, 40),
    "green": (50, 160, 60),
    "blue": (40, 90, 220),
    "purple": (140, 60, 170),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "brown": (130, 80, 40),
    "gray": (130, 130, 130),
}
PARTS = ("body", "head", "wing", "tail", "beak", "eye")
PART_IDS = {name: i + 1 for i, name in enumerate(PARTS)}  # 0 is background
WING_PATTERNS = ("plain", "striped", "spotted")
TAIL_SHAPES = ("fan", "forked", "pointed")
BEAK_SHAPES = ("short", "long", "hooked")


@dataclass(frozen=True)
class Species:
    """One species of generated bird: its look, and the trait that sets it apart from its siblings.

    Args:
        name: its name.
        family: its family (siblings share it).
        body: body colour.
        head: head colour.
        wing: wing colour.
        tail: tail colour.
        beak: beak colour.
        wing_pattern: plain, striped or spotted.
        tail_shape: fan, forked or pointed.
        beak_shape: short, long or hooked.
        varying: the attribute that differs between siblings.
        varying_part: the part it belongs to.
    """

    name: str
    family: str
    body: str
    head: str
    wing: str
    tail: str
    beak: str
    wing_pattern: str = "plain"
    tail_shape: str = "fan"
    beak_shape: str = "short"
    varying: str = "wing"  #: the attribute that differs between siblings
    varying_part: str = "wing"  #: the part it belongs to

    def traits(self) -> dict[str, str]:
        """The trait phrase of every part.

        Returns:
            Part -> phrase, e.g. ``{"wing": "red striped wing", ...}``.
        """
        wing = (
            f"{self.wing} {self.wing_pattern} wing" if self.wing_pattern != "plain" else f"{self.wing} wing"
        )
        return {
            "body": f"{self.body} body",
            "head": f"{self.head} head",
            "wing": wing,
            "tail": f"{self.tail} {self.tail_shape} tail",
            "beak": f"{self.beak} {self.beak_shape} beak",
        }

    def trait_of_varying(self) -> str:
        """This species' value of its family's varying trait, as a phrase.

        Returns:
            The phrase (``"red wing"``).
        """
        attr = self.varying
        value = getattr(self, attr)
        part = self.varying_part
        return f"{value} {part}"


# (family, base look, varying attribute, its part, the three sibling values)
_FAMILIES = [
    (
        "finch",
        dict(body="brown", head="brown", wing="red", tail="brown", beak="yellow"),
        "wing",
        "wing",
        ("red", "blue", "yellow"),
    ),
    (
        "warbler",
        dict(body="yellow", head="gray", wing="gray", tail="gray", beak="black"),
        "head",
        "head",
        ("red", "black", "blue"),
    ),
    (
        "tanager",
        dict(body="red", head="red", wing="black", tail="black", beak="gray"),
        "tail_shape",
        "tail",
        ("fan", "forked", "pointed"),
    ),
    (
        "sparrow",
        dict(body="gray", head="brown", wing="brown", tail="brown", beak="gray"),
        "wing_pattern",
        "wing",
        ("plain", "striped", "spotted"),
    ),
    (
        "thrush",
        dict(body="white", head="brown", wing="brown", tail="brown", beak="black"),
        "body",
        "body",
        ("white", "yellow", "gray"),
    ),
    (
        "oriole",
        dict(body="orange", head="black", wing="black", tail="black", beak="gray"),
        "tail",
        "tail",
        ("orange", "white", "blue"),
    ),
    (
        "shrike",
        dict(body="white", head="gray", wing="black", tail="black", beak="black", beak_shape="hooked"),
        "head",
        "head",
        ("gray", "orange", "green"),
    ),
    (
        "bunting",
        dict(body="blue", head="blue", wing="blue", tail="blue", beak="gray"),
        "wing",
        "wing",
        ("green", "orange", "purple"),
    ),
]
_PREFIXES = [
    "Alder",
    "Birch",
    "Cedar",
    "Dune",
    "Elm",
    "Fern",
    "Glen",
    "Heath",
    "Iris",
    "Juniper",
    "Kelp",
    "Larch",
    "Moss",
    "Nettle",
    "Oak",
    "Pine",
    "Quarry",
    "Reed",
    "Sedge",
    "Thistle",
    "Umber",
    "Vale",
    "Willow",
    "Yarrow",
]


def _build() -> list[Species]:
    species = []
    prefixes = iter(_PREFIXES)
    for family, base, attr, part, values in _FAMILIES:
        proto = Species(name="", family=family, varying=attr, varying_part=part, **base)
        for value in values:
            species.append(replace(proto, name=f"{next(prefixes)} {family}", **{attr: value}))
    return species


SPECIES: list[Species] = _build()
SPECIES_BY_NAME: dict[str, Species] = {s.name: s for s in SPECIES}


def siblings(species: Species | str) -> list[Species]:
    """The other species of the same family.

    Args:
        species: a species or its name.

    Returns:
        Its siblings.

    Raises:
        KeyError: for an unknown name.
    """
    if isinstance(species, str):
        if species not in SPECIES_BY_NAME:
            raise KeyError(f"no testbed species named {species!r}; they are: {', '.join(SPECIES_BY_NAME)}")
        species = SPECIES_BY_NAME[species]
    return [s for s in SPECIES if s.family == species.family and s.name != species.name]


def trait_vocabulary() -> list[str]:
    """Every trait phrase any species has: the testbed's concept vocabulary.

    Returns:
        The phrases, sorted.
    """
    return sorted({t for s in SPECIES for t in s.traits().values()})
