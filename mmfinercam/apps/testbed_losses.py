"""The testbed model's configuration and training objectives (:mod:`.train_testbed` trains it).

Contrastive objectives share the weights; none ever sees a mask: the CLIP loss on the model's
own embedding, a token-level loss on the mean patch token, and region losses that caption
windows of the token grid with the traits of the parts they show
(:mod:`mmfinercam.testbed.regions`) and match them with the window's mean GEM token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..backends.open_clip import OpenCLIPVisionTower
from ..explain.gem import GEMPath
from ..explain.tower import run_tower
from ..testbed.generator import IMAGE_SIZE
from ..testbed.regions import PATCH, RegionCaptions, caption_truth
from ..testbed.species import SPECIES

TEXT_CONTEXT = 32  #: the text tower's context
MODEL_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH,
        "layers": 4,
        "width": 128,
        "head_width": 32,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {"context_length": TEXT_CONTEXT, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 3},
}
MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
GEM_DEPTH = 4 + 1  #: GEM over every block of the 4-layer tower
TEMPLATES = ["a photo of a {}."]


def multi_positive_nce(
    logits: torch.Tensor, positives: torch.Tensor, ignore: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE where every true pair counts: -log of the softmax mass on positives.

    Rows or columns without any positive take part only as negatives of the other direction.

    Args:
        logits: images × captions.
        positives: bool, the true pairs.
        ignore: bool, pairs left out of both softmaxes (neither positive nor negative).

    Returns:
        The loss.
    """
    if ignore is not None:
        logits = logits.masked_fill(ignore & ~positives, -torch.inf)

    def one_way(lg: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        rows = pos.any(dim=1)  # a row with no positive (a background window) is only a negative
        log_p = lg[rows].log_softmax(dim=1)
        return -(torch.logsumexp(log_p.masked_fill(~pos[rows], -torch.inf), dim=1)).mean()

    return 0.5 * (one_way(logits, positives) + one_way(logits.T, positives.T))


def batch_loss(
    model: Any,
    tokenizer: Any,
    x: torch.Tensor,
    species: Sequence[int],
    texts: list[str],
    token_weight: float = 1.0,
    token_path: str = "local",
    regions: RegionCaptions | None = None,
    region_weight: float = 0.0,
    gem_depth: int = GEM_DEPTH,
    gem_temperature: float | None = None,
    species_region_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss of one batch and its parts (see the module docstring).

    * ``cls``: CLIP loss on the model's own image embedding;
    * ``tokens``: the same on the mean of the normalized patch tokens. ``token_path="local"``:
      each patch's own embedding projected into the joint space (no attention, so nothing global
      can reach it); ``"gem"``: the GEM tokens of the inference path;
    * ``regions`` (with ``region_weight``): each window's mean GEM token against trait captions of
      what the window shows (:func:`~mmfinercam.testbed.regions.region_captions`);
    * ``species_regions`` (with ``species_region_weight``): each window's mean GEM token against
      the species prompts of inference, positive for every species consistent with what the window
      shows (:func:`~mmfinercam.testbed.regions.species_consistency`).

    The GEM path uses ``gem_depth`` and ``gem_temperature``, its self-self attention detached.

    Args:
        model: the open_clip model being trained.
        tokenizer: its tokenizer.
        x: B×3×H×W images.
        species: B species indices.
        texts: B captions.
        token_weight: weight of the token-level loss.
        token_path: ``"local"`` or ``"gem"``.
        regions: the batch's region windows and captions.
        region_weight: weight of the region-caption loss.
        gem_depth: GEM depth of the training path.
        gem_temperature: GEM inverse temperature of the training path.
        species_region_weight: weight of the species-prompt loss on windows.

    Returns:
        The total and each part.
    """
    truth = [caption_truth(t) for t in texts]
    positives = torch.tensor([[int(s) in t for t in truth] for s in species])
    tower = OpenCLIPVisionTower(model.visual)  # a view: cheap, holds no state
    use_regions = regions is not None and region_weight > 0
    gem_tokens = None
    if token_path == "gem" or use_regions:
        out = run_tower(tower, x, GEMPath(tower, gem_depth, gem_temperature, attention_grad=False))
        z, gem_tokens = out.global_embedding, out.patch_tokens
    else:
        z = model.encode_image(x)
    if token_path == "gem" and gem_tokens is not None:
        tokens = gem_tokens
    else:
        tokens = tower.project_tokens(tower.embed(x))[:, tower.num_prefix_tokens :]
    z = F.normalize(z, dim=-1)
    g = F.normalize(F.normalize(tokens, dim=-1).mean(dim=1), dim=-1)
    species_texts = (
        [TEMPLATES[0].format(sp.name) for sp in SPECIES] if use_regions and species_region_weight else []
    )
    all_texts = texts + (regions.texts if regions is not None and use_regions else []) + species_texts
    unique = {text: k for k, text in enumerate(dict.fromkeys(all_texts))}  # each caption encoded once
    where = torch.tensor([unique[text] for text in all_texts])
    t = F.normalize(model.encode_text(tokenizer(list(unique))), dim=-1)[where]
    t, t_regions, t_species = t.split(
        [len(texts), len(all_texts) - len(texts) - len(species_texts), len(species_texts)]
    )
    scale = model.logit_scale.exp().clamp(max=100)
    losses = {"cls": multi_positive_nce(scale * z @ t.T, positives)}
    losses["tokens"] = multi_positive_nce(scale * g @ t.T, positives) if token_weight else z.new_zeros(())
    total = losses["cls"] + token_weight * losses["tokens"]
    if regions is not None and gem_tokens is not None and use_regions:
        win = regions.windows.flatten(1).to(gem_tokens.dtype)  # W×N
        pooled = torch.einsum("wn,wnd->wd", win, F.normalize(gem_tokens, dim=-1)[regions.owner])
        e = F.normalize(pooled, dim=-1)
        losses["regions"] = multi_positive_nce(scale * e @ t_regions.T, regions.positives, regions.ignore)
        total = total + region_weight * losses["regions"]
        if species_texts:
            assert regions.species_positives is not None  # region_captions always gives them
            losses["species_regions"] = multi_positive_nce(
                scale * e @ t_species.T, regions.species_positives, regions.species_ignore
            )
            total = total + species_region_weight * losses["species_regions"]
    return total, losses
