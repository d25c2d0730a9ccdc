"""Gradient CAMs and Finer-CAM, for CLIP-like models and for any image classifier.

One base class (:class:`BaseCAM`) computes a layer's activations and the gradients of a score;
each method is a short subclass registered by name (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM,
Layer-CAM, Score-CAM). On a CLIP model, LeGrad (:mod:`.legrad`) explains the same scores from
the gradients of the attention. *What* is explained is a score function (:mod:`.targets`): a
logit, or Finer-CAM's contrast of the target with its most similar classes.
"""

from __future__ import annotations

from . import legrad, methods  # noqa: F401 - registers the shipped CAMs and LeGrad
from .base import CAM_METHODS, BaseCAM, CAMOutput, cam_class, cam_heatmap, register_cam
from .classifier import ClassifierCAMResult, ClassifierFinerCAM
from .clip import (
    CLIP_EXPLAINERS,
    clip_cam,
    clip_capture,
    clip_finer_cam,
    gradient_methods,
    register_clip_explainer,
)
from .layers import ChannelsLast, Reshape, TokenGrid, channels_last, find_target_layer, model_logits
from .methods import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from .targets import ScoreFn, finer_score, finer_target, logit_score, reference_classes, target_classes

__all__ = [
    "CAM_METHODS",
    "CLIP_EXPLAINERS",
    "BaseCAM",
    "CAMOutput",
    "ChannelsLast",
    "ClassifierCAMResult",
    "ClassifierFinerCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "Reshape",
    "ScoreCAM",
    "ScoreFn",
    "TokenGrid",
    "XGradCAM",
    "cam_class",
    "cam_heatmap",
    "channels_last",
    "clip_cam",
    "clip_capture",
    "clip_finer_cam",
    "find_target_layer",
    "finer_score",
    "finer_target",
    "gradient_methods",
    "logit_score",
    "model_logits",
    "reference_classes",
    "register_cam",
    "register_clip_explainer",
    "target_classes",
]
