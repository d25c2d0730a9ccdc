"""Time the reference GEM on given weights/images/prompts; run with PYTHONPATH=<gem ref dir>.

    python benchmarks/gem_torch_worker.py DIR REPEATS [DEVICE]  # DIR: weights.pt, images.pt, prompts.json

Prints one JSON line: median seconds for GEMWrapper(images, prompts) (which re-encodes the
prompts on every call, as the reference does) and for its visual tower alone.
"""

import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch

sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # gem imports cv2 only to draw
import open_clip  # noqa: E402
from gem import GEMWrapper  # noqa: E402


def median_time(fn, repeats, device):
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    folder, repeats = Path(sys.argv[1]), int(sys.argv[2])
    device = torch.device(sys.argv[3] if len(sys.argv) > 3 else "cpu")
    spec = json.loads((folder / "prompts.json").read_text())
    if spec.get("config"):
        from open_clip.model import CLIP

        model = CLIP(**spec["config"])
    else:
        model = open_clip.create_model(spec["model"], pretrained=None)
    model.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu"))
    model.to(device).eval()
    gem = GEMWrapper(model, open_clip.get_tokenizer("ViT-B-16"), depth=7)
    images = torch.load(folder / "images.pt", map_location="cpu").to(device)
    prompts = spec["prompts"]
    with torch.no_grad():
        full = median_time(lambda: gem(images, prompts, normalize=False), repeats, device)
        visual = median_time(lambda: gem.model.visual(images), repeats, device)
    print(json.dumps({"seconds": full, "visual_seconds": visual}))


if __name__ == "__main__":
    main()
