"""The reference GEM on given weights/images/prompts, called one at a time from ``mmfinercam
bench``; run with PYTHONPATH=<gem ref dir> (its own open_clip).

    python benchmarks/gem_torch_worker.py DIR [DEVICE]  # DIR: weights.pt, images.pt, prompts.json

Prints ``ready`` once set up, then for each line read from stdin runs one call and prints
``done`` when it has finished (on CUDA, synchronized): ``full`` is GEMWrapper(images, prompts),
which re-encodes the prompts on every call as the reference does; ``visual`` its visual tower
alone. The bench times each call from its side, interleaved with its own calls.
"""

import json
import sys
import types
from pathlib import Path

import torch

sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # gem imports cv2 only to draw
import open_clip  # noqa: E402
from gem import GEMWrapper  # noqa: E402


def main():
    folder = Path(sys.argv[1])
    device = torch.device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
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
    calls = {
        "full": lambda: gem(images, prompts, normalize=False),
        "visual": lambda: gem.model.visual(images),
    }
    print("ready", flush=True)
    with torch.no_grad():
        for line in sys.stdin:
            calls[line.strip()]()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            print("done", flush=True)


if __name__ == "__main__":
    main()
