"""``serve(cfg)``: the inspection page, a local Gradio web page over ``Inspector`` (``python -m neu_defects.app``).

Left, a box to drop or pick an image file and the gallery of the test split (the classifier's
mistakes first); a click on a thumbnail inspects that image. Right, one line per model saying what
it answered (or why a file was refused), the image, and a panel per model given: the classifier's
probabilities and class activation map, the anomaly model's verdict and map, the detector's boxes.
Nothing is written: the page only reads the checkpoints and the images.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

# Gradio reports usage to its servers unless told otherwise at import; the page must run offline.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from neu_defects.core.cli import log, quiet_libraries  # noqa: E402
from neu_defects.core.errors import UserError  # noqa: E402
from neu_defects.workflows.inspection import SLOTS, GalleryItem, Inspector, split_gallery  # noqa: E402

TITLE = "neu-defects inspection"
PROMPT = "Drop an image in the box, or pick one of the test split on the left."
PANEL = 240  # pixels: the image panels' height, so that the page fits a laptop screen


def refusal(path: str, err: UserError) -> str:
    """The decoder's message about an uploaded file, naming it as the user knows it: Gradio keeps
    uploads under a temporary folder of its own, which means nothing to the person at the page."""
    return str(err).replace(f"{Path(path).parent}{os.sep}", "")


def build_page(inspector: Inspector, gallery: list[GalleryItem], note: str) -> gr.Blocks:
    """The page's layout and events; ``inspect`` (the file box) and ``gallery`` are its API endpoints."""
    described = [f"`{slot}` {path}" for slot, path in inspector.paths.items()]
    with gr.Blocks(title=TITLE, analytics_enabled=False) as page:
        gr.Markdown(f"## {TITLE}\n" + " · ".join(described))
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                upload = gr.File(label="Image file", file_count="single", type="filepath", height=120)
                gr.Markdown(note)
                thumbnails = gr.Gallery(label="Test split", columns=2, height=560, allow_preview=False,
                                        interactive=False, object_fit="cover")
            with gr.Column(scale=5):
                status = gr.Markdown(PROMPT)
                panels: list[gr.components.Component] = []
                with gr.Row():
                    panels.append(gr.Image(label="Image", interactive=False, height=PANEL, format="png"))
                    if inspector.classifier is not None:
                        panels.append(gr.Image(label=f"Class activation map: {inspector.classifier.explainer.describe()}",
                                               interactive=False, height=PANEL, format="png"))
                        panels.append(gr.Label(label="Class probabilities"))
                with gr.Row():
                    if inspector.anomaly is not None:
                        with gr.Column():
                            panels.append(gr.Image(label="Anomaly map", interactive=False, height=PANEL, format="png"))
                            panels.append(gr.Markdown())
                    if inspector.detector is not None:
                        panels.append(gr.Image(label=f"Detector boxes (score >= {inspector.min_score:g})",
                                               interactive=False, height=PANEL, format="png"))

        def answer(path: str | None) -> list:
            empty = [None] * len(panels)
            if not path:
                return [PROMPT, *empty]
            try:
                result = inspector.inspect(path)
            except UserError as err:
                message = refusal(path, err)
                gr.Warning(message)
                return [f"**Refused:** {message}", *empty]
            shown = [result.image]
            if inspector.classifier is not None:
                shown += [result.cam, result.probabilities]
            if inspector.anomaly is not None:
                shown += [result.anomaly_map, result.verdict()]
            if inspector.detector is not None:
                shown.append(result.boxes)
            return [result.summary(Path(path).name), *shown]

        def pick(event: gr.SelectData) -> str:
            return str(gallery[event.index].path)

        # One image at a time: the class activation map hooks into the shared net while it runs.
        upload.change(answer, inputs=upload, outputs=[status, *panels], api_name="inspect", concurrency_limit=1)
        # A thumbnail goes into the file box, whose change inspects it like an upload.
        thumbnails.select(pick, outputs=upload, api_visibility="private")
        page.load(lambda: [(str(item.path), item.caption) for item in gallery], outputs=thumbnails,
                  api_name="gallery")
    return page


def serve(cfg: DictConfig, prevent_thread_lock: bool = False) -> gr.Blocks:
    """Open the models, list the gallery and serve the page; blocks until Ctrl-C unless
    ``prevent_thread_lock`` (then the caller closes the returned page)."""
    quiet_libraries()
    # Gradio's start-up check and its client log every request to the local server.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    inspector = Inspector.open({slot: cfg.get(slot) for slot in SLOTS}, cfg.min_score)
    gallery, note = split_gallery(next(iter(inspector.paths.values())), inspector.classifier, cfg.get("data_root"))
    log.info("serving %s; gallery: %s", ", ".join(f"{s}={p}" for s, p in inspector.paths.items()), note)
    inspector.warm_up()
    page = build_page(inspector, gallery, note)
    # Gradio serves only files under the working and temporary folders unless told: the gallery's are the dataset's.
    folders = sorted({str(item.path.parent) for item in gallery})
    page.launch(server_name=cfg.server_name, server_port=cfg.server_port, share=cfg.share,
                prevent_thread_lock=prevent_thread_lock, allowed_paths=folders, ssr_mode=False, quiet=cfg.quiet)
    return page
