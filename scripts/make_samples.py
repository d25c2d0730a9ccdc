"""Regenerate the shipped sample images (mmfinercam/data/samples) from the testbed generator.

    python scripts/make_samples.py

Seeds come from the held-out range, far from the indices `mmfinercam eval` uses.
"""

import json
from pathlib import Path

from mmfinercam.testbed.generator import HELD_OUT_SEEDS, render
from mmfinercam.testbed.species import SPECIES, siblings

OUT = Path(__file__).resolve().parents[1] / "mmfinercam" / "data" / "samples"
CHOICES = [("Alder finch", 3), ("Fern warbler", 5), ("Heath tanager", 2)]  # (species, seed offset)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, offset in CHOICES:
        index = [s.name for s in SPECIES].index(name)
        seed = HELD_OUT_SEEDS.start + 900_000 + offset
        sample = render(index, seed)
        stem = name.lower().replace(" ", "_")
        sample.image.save(OUT / f"{stem}.png")
        part = sample.species.varying_part
        rows.append(
            {
                "image": f"{stem}.png",
                "target": name,
                "contrast": [s.name for s in siblings(sample.species)],
                "differs_in": part,
                "seed": seed,
                "species_index": index,
            }
        )
    (OUT / "samples.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {len(rows)} samples to {OUT}")


if __name__ == "__main__":
    main()
