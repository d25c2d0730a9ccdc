"""A local web app: upload an image, type a target and contrasts, see the plain map beside Finer-CAM.

    mmfinercam app                      # http://127.0.0.1:7860, the shipped testbed model
    mmfinercam app --host 0.0.0.0 --port 8080 --max-upload-mb 20

The work is done by :func:`localize_for_app`, a plain function the tests call directly; the
Gradio page (:func:`build_app`) only wires widgets to it. Every mistake a user can make (no
image, an empty prompt, a file that is not an image, an image too large) comes back as one
sentence shown on the page, never a stack trace.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import MMFinerCAMError
from ..explain.finer import to_heatmap
from ..localizer import ModelCache
from ..options import FinerOptions, dense_methods
from ..outputs import output_stems, write_result
from ..viz import blend, display_copy

MAX_PIXELS = 40_000_000  #: larger images are refused (decoding and resizing them stalls a CPU)
DEFAULT_MAX_UPLOAD_MB = 10


class AppInputError(MMFinerCAMError):
    """A mistake in what the user gave the app; its message is shown on the page."""


@dataclass
class AppResult:
    """What the page shows for one image.

    Args:
        plain: the plain target map over the image.
        finer: Finer-CAM over the image.
        details: markdown: contrasts, weights, similarities, where the peak is.
        files: the downloads: the heatmap (.npy), the overlay (.png), the record (.json).
    """

    plain: Image.Image  #: the plain target map over the image
    finer: Image.Image  #: Finer-CAM over the image
    details: str  #: markdown: contrasts, weights, similarities, where the peak is
    files: list[str]  #: downloads: Finer-CAM heatmap (.npy), overlay (.png), summary (.json)


def local_models() -> list[str]:
    """Known model names whose weights are on this machine, the shipped testbed model first.

    Returns:
        The names.
    """
    from ..backends import known_models, weights_present

    names = []
    for name in known_models():
        try:
            if weights_present(name):
                names.append(name)
        except Exception:  # noqa: BLE001 - an entry we cannot check is simply not offered
            continue
    return sorted(names, key=lambda n: n != "testbed")


def _parse_contrasts(text: str | None) -> list[str]:
    """Contrasts typed as "a, b" or one a line."""
    if not text:
        return []
    parts = [p.strip() for line in text.splitlines() for p in line.split(",")]
    return [p for p in parts if p]


def _open_image(path: str | None, max_pixels: int) -> Image.Image:
    from ..images import read_image

    if path is None or str(path).strip() == "":
        raise AppInputError("Upload an image or pick a sample first.")
    try:
        with Image.open(path) as probe:  # size from the header, before decoding the pixels
            width, height = probe.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise AppInputError(f"That file is not an image this app can read ({type(err).__name__}).") from err
    if width * height > max_pixels:
        raise AppInputError(
            f"The image is {width}×{height} px; the limit is {max_pixels // 1_000_000} megapixels. "
            "Scale it down and upload it again."
        )
    try:
        return read_image(path)
    except MMFinerCAMError as err:
        raise AppInputError(f"That image cannot be used: {err}") from err


def localize_for_app(
    image: str | None,
    target: str | None,
    contrast: str | None,
    vocabulary: str | None,
    alpha: float,
    model: str,
    *,
    models: ModelCache,
    max_pixels: int = MAX_PIXELS,
    out_dir: str | Path | None = None,
    method: str = "gem",
) -> AppResult:
    """The plain map and Finer-CAM for one image, as the page shows them.

    Args:
        image: the uploaded file's path.
        target: the target as typed.
        contrast: contrasts typed as "a, b" or one a line.
        vocabulary: a shipped vocabulary for automatic contrasts (typed contrasts win).
        alpha: the contrast strength.
        model: a model name.
        models: the process's model cache.
        max_pixels: the largest image taken.
        out_dir: where the downloads go (default: a new temporary folder).
        method: a dense method (the page shows its plain map beside Finer-CAM's).

    Returns:
        The pictures, the details and the downloads.

    Raises:
        AppInputError: for any mistake a user can make, as one sentence for the page.
    """
    rgb = _open_image(image, max_pixels)
    target = (target or "").strip()
    if not target:
        raise AppInputError("Type a target concept, e.g. “red wing” or a species name.")
    contrasts = _parse_contrasts(contrast)
    vocabulary = vocabulary or None
    if contrasts and vocabulary:
        vocabulary = None  # typed contrasts win over the vocabulary
    if not model:
        raise AppInputError("Pick a model.")
    try:
        loc = models(model)
    except MMFinerCAMError as err:
        raise AppInputError(f"Model {model!r} cannot be loaded: {err}") from err
    try:
        if method not in dense_methods():
            raise AppInputError(f"Pick a dense method: {', '.join(dense_methods())}.")
        options = FinerOptions(alpha=float(alpha), method=method)
        res = loc.finer_cam(rgb, target, contrasts or None, vocabulary=vocabulary, options=options)
    except (MMFinerCAMError, ValueError) as err:
        raise AppInputError(str(err)) from err
    res.sources[0] = Path(str(image)).name
    shown = display_copy(rgb)  # the pictures at what a page shows; the .npy keeps the full map
    assert res.target_scores is not None  # a dense method's result has them
    plain = blend(shown, to_heatmap(res.target_scores[0][None], (shown.height, shown.width))[0])  # alpha = 0
    finer = blend(shown, res.heatmap(0))
    out = Path(out_dir or tempfile.mkdtemp(prefix="mmfinercam-app-"))
    out.mkdir(parents=True, exist_ok=True)
    stem = output_stems([str(image)])[0]
    summary = write_result(res, 0, out, stem, overlay=False, extra={"model": model, "method": method})
    finer.save(out / f"{stem}.png")  # the overlay as the page shows it
    files = [out / summary["files"]["heatmap"], out / f"{stem}.png", out / summary["files"]["summary"]]
    return AppResult(plain, finer, _details(summary), [str(f) for f in files])


def _details(s: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {c} | {w:.3f} | {sim:.3f} |"
        for c, w, sim in zip(s["contrast"], s["weights"], s["contrast_similarity"])
    )
    peak = (
        f"Finer-CAM peak at x={s['peak_x']:.0f}, y={s['peak_y']:.0f}."
        if s["peak_x"] is not None
        else "No positive Finer-CAM evidence anywhere: the map is empty, and has no peak."
    )
    table = (
        "| contrast | weight | similarity |\n|---|---|---|\n" + rows
        if rows
        else "No contrasts: the Finer-CAM map is the plain map."
    )
    doubt = (
        f"\n\nThe model matches this image better to **{s['best_match']}** than to the target: the "
        "map shows where the image leans towards the target, not that the model sees it here."
        if s["best_match"] != s["target"]
        else ""
    )
    return (
        f"**{s['target']}** (similarity {s['target_similarity']:.3f}), alpha = {s['alpha']:g}, "
        f"model `{s['model']}`, method `{s['method']}`\n\n{table}\n\n{peak}{doubt}"
    )


def build_app(
    models: Sequence[str] | None = None,
    *,
    cache: ModelCache | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Any:
    """The Gradio Blocks page, not launched.

    Args:
        models: the models offered (default: those whose weights are here).
        cache: the model cache (default: a new one).
        max_pixels: the largest image taken.

    Returns:
        The Gradio page.
    """
    import gradio as gr

    from .. import prompts

    names = list(models) if models else local_models()
    cache = cache or ModelCache()

    def run(
        image: str, target: str, contrast: str, vocabulary: str, alpha: float, model: str, method: str
    ) -> tuple:
        try:
            r = localize_for_app(
                image,
                target,
                contrast,
                vocabulary,
                alpha,
                model,
                models=cache,
                max_pixels=max_pixels,
                method=method,
            )
        except AppInputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return r.plain, r.finer, r.details, r.files

    with gr.Blocks(title="mmfinercam") as page:
        gr.Markdown(
            "## mmfinercam: where is the concept, and what separates it from similar ones?\n"
            "Upload an image (or pick a sample), type a target and contrasting concepts (or pick a "
            "vocabulary for automatic contrasts), and compare the plain map with Finer-CAM."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="image"
                )
                target = gr.Textbox(label="Target", placeholder="e.g. Alder finch", elem_id="target")
                contrast = gr.Textbox(
                    label="Contrasts (comma-separated)",
                    placeholder="e.g. Birch finch, Cedar finch",
                    elem_id="contrast",
                )
                vocabulary = gr.Dropdown(
                    choices=[""] + prompts.available(),
                    value="",
                    label="…or automatic contrasts from a vocabulary",
                    elem_id="vocabulary",
                )
                alpha = gr.Slider(
                    0.0, 2.0, value=1.0, step=0.05, label="alpha (0 = plain map)", elem_id="alpha"
                )
                model = gr.Dropdown(
                    choices=names, value=names[0] if names else None, label="Model", elem_id="model"
                )
                method = gr.Dropdown(
                    choices=dense_methods(), value="gem", label="Dense method", elem_id="method"
                )
                go = gr.Button("Localize", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                with gr.Row():
                    plain = gr.Image(label="Plain map (target only)", elem_id="plain", interactive=False)
                    finer = gr.Image(label="Finer-CAM", elem_id="finer", interactive=False)
                details = gr.Markdown(elem_id="details")
                files = gr.File(
                    label="Download: heatmap (.npy), overlay (.png), summary (.json)", file_count="multiple"
                )
        samples = sample_rows()
        if samples:
            gr.Examples(samples, inputs=[image, target, contrast], label="Samples")
        inputs = [image, target, contrast, vocabulary, alpha, model, method]
        go.click(run, inputs, [plain, finer, details, files])
    return page


def sample_rows() -> list[list[str]]:
    """The shipped sample birds as example rows.

    Returns:
        [image path, target, contrasts] of each (from ``samples.json``).
    """
    from ..testbed.model import SAMPLES_DIR, shipped_samples

    try:
        entries = shipped_samples()
    except (OSError, json.JSONDecodeError):
        return [[str(p), "", ""] for p in sorted(SAMPLES_DIR.glob("*.png"))]
    return [
        [str(e["path"]), e.get("target", ""), ", ".join(e.get("contrast", []))]
        for e in entries
        if e["path"].is_file()
    ]


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    models: Sequence[str] | None = None,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    share: bool = False,
    block: bool = True,
) -> Any:
    """Serve the app; uploads capped.

    Args:
        host: the address to listen on (loopback unless told otherwise).
        port: the port.
        models: the models offered (default: those whose weights are here).
        max_upload_mb: the largest upload accepted.
        share: make a public Gradio link (off by default).
        block: wait until the server stops.

    Returns:
        What Gradio's ``launch`` returns.
    """
    page = build_app(models)
    return page.launch(
        server_name=host,
        server_port=port,
        max_file_size=f"{max_upload_mb:g}mb",
        share=share,
        show_error=True,
        prevent_thread_lock=not block,
        quiet=True,
    )
