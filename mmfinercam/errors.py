"""Exceptions raised by mmfinercam.

Every error a user can cause has its own class and a one-line message that says what was
wrong and how to fix it, so the command line can print it without a traceback.
"""

from __future__ import annotations


class MMFinerCAMError(Exception):
    """Base class of every error mmfinercam raises on purpose."""


class ConfigError(MMFinerCAMError, ValueError):
    """A setting is unusable: an alpha, a method name, a depth, a device, a size, a count.

    Raised where the setting is given (:class:`~mmfinercam.options.FinerOptions`, a loader, a
    command's options), before any model runs, so the math below never checks it again.
    """


class WeightsNotFoundError(MMFinerCAMError, FileNotFoundError):
    """Model weights could not be found locally and could not be downloaded."""


class ImageLoadError(MMFinerCAMError, ValueError):
    """An image could not be read, or is unusable (e.g. smaller than one patch).

    When a whole batch is unusable, ``failed`` lists each image and why.

    Args:
        message: the one-line reason.
        failed: the images of a batch that could not be used
            (:class:`~mmfinercam.pixels.FailedImage`).
    """

    def __init__(self, message: str, failed: list | None = None) -> None:
        super().__init__(message)
        self.failed = failed or []


class PromptError(MMFinerCAMError, ValueError):
    """A prompt, contrast list or vocabulary is unusable (empty, repeated, ...)."""


class UnsupportedModelError(MMFinerCAMError, TypeError):
    """The model is of a kind this backend cannot run (e.g. a ResNet tower for GEM)."""
