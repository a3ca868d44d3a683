"""The inspection page: served on a local port and driven through Gradio's own Python client."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from neu_defects.core.errors import UserError
from neu_defects.workflows.app import serve
from neu_defects.workflows.explain import explain
from neu_defects.workflows.inspection import Inspector, split_gallery
from neu_defects.workflows.predict import predict
from neu_defects.workflows.train import train

from .conftest import compose_cfg

# Two epochs of a tiny CNN: half right on the fixture's test split, so the gallery has mistakes to rank first.
CNN = ["trainer.max_epochs=2", "model.optimizer.lr=0.01", "callbacks.progress_bar=null", "callbacks.gradcam=null",
       "model.net.widths=[8,16]", "model.image_size=32"]
ANOMALY = ["model=autoencoder_pixel", "data.normal_classes=[crazing]", "model.image_size=32", "model.net.widths=[8,16]",
           "model.net.latent_dim=8", "trainer.max_epochs=1", "callbacks.progress_bar=null"]


@pytest.fixture(scope="module")
def checkpoints(fixture_root, tmp_path_factory):
    """(classifier, anomaly model) checkpoints trained on the NEU-DET fixture, each in its run directory."""
    out = []
    for name, overrides in (("app_cnn", CNN), ("app_anomaly", ANOMALY)):
        run_dir = tmp_path_factory.mktemp(name)
        train(compose_cfg("train", [f"data.root={fixture_root / 'neu-det'}", *overrides], run_dir))
        out.append(run_dir / "checkpoints" / "best.ckpt")
    return tuple(out)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def client(checkpoints, fixture_root, tmp_path_factory):
    classifier, anomaly = checkpoints
    # The fixture runs were trained without Hydra, so no .hydra/config.yaml says where their data is.
    cfg = compose_cfg("app", [f"ckpt_path={classifier}", f"anomaly_ckpt_path={anomaly}",
                              f"data_root={fixture_root / 'neu-det'}", f"server_port={free_port()}", "quiet=true"],
                      tmp_path_factory.mktemp("app"))
    page = serve(cfg, prevent_thread_lock=True)
    try:
        yield Client(page.local_url, verbose=False)
    finally:
        page.close()


def predicted(ckpt, images, tmp_path) -> dict[str, dict]:
    """predict's row for each file of ``images`` (a file or a folder), by file name."""
    cfg = compose_cfg("predict", [f"ckpt_path={ckpt}", f"input={images}", f"output={tmp_path / 'p.csv'}",
                                  "progress=false"], tmp_path)
    return {Path(row["path"]).name: row for row in predict(cfg)["rows"]}


def test_an_image_gets_the_answers_predict_gives(client, checkpoints, fixture_root, tmp_path):
    classifier, anomaly = checkpoints
    image = fixture_root / "neu-det" / "IMAGES" / "scratches_3.jpg"
    status, shown, cam, label, anomaly_map, verdict = client.predict(handle_file(image), api_name="/inspect")
    row = predicted(classifier, image, tmp_path)[image.name]
    assert label["label"] == row["pred"]
    confidences = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert confidences == pytest.approx({k[2:]: v for k, v in row.items() if k.startswith("p_")}, abs=1e-5)
    flagged = predicted(anomaly, image, tmp_path)[image.name]["is_anomaly"]
    assert verdict.startswith("**anomalous**" if flagged else "**normal**") and "threshold" in verdict
    assert "scratches_3.jpg" in status and f"classifier: **{row['pred']}**" in status
    # The map is explain's, pixel for pixel: same method, layer and overlay at the image's own size.
    explain(compose_cfg("explain", [f"ckpt_path={classifier}", f"input={image}"], tmp_path / "explained"))
    pixels, overlay = (np.asarray(Image.open(p).convert("RGB")) for p in (shown, cam))
    np.testing.assert_array_equal(overlay, np.asarray(Image.open(tmp_path / "explained" / "overlays" / "scratches_3.png")))
    assert overlay.shape == pixels.shape == (48, 48, 3) and np.abs(overlay.astype(int) - pixels).mean() > 10
    assert Image.open(anomaly_map).size == (32, 32)  # drawn at the anomaly model's input size, as predict draws it


@pytest.mark.parametrize("kind", ["not_an_image", "truncated", "empty"])
def test_a_bad_file_gets_a_message_not_an_exception(client, fixture_root, tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    jpeg = (fixture_root / "neu-det" / "IMAGES" / "crazing_1.jpg").read_bytes()
    path.write_bytes({"not_an_image": b"defect report, not pixels\n", "truncated": jpeg[:300], "empty": b""}[kind])
    status, *panels = client.predict(handle_file(path), api_name="/inspect")
    assert status.startswith(f"**Refused:** cannot decode image {kind}.jpg") and "corrupt or truncated" in status
    # Every panel is cleared (the client reads a cleared label as {}).
    assert all(panel in (None, {}) for panel in panels)


def test_the_gallery_lists_the_misclassified_test_images_first(client, checkpoints, fixture_root, tmp_path):
    captions = [item["caption"] for item in client.predict(api_name="/gallery")]
    split = (checkpoints[0].parent.parent / "split.csv").read_text().splitlines()
    test_names = sorted(Path(line.split(",")[0]).name for line in split if line.endswith(",test"))
    names = [caption.splitlines()[1].split(" ")[0] for caption in captions]
    assert sorted(names) == test_names
    rows = predicted(checkpoints[0], fixture_root / "neu-det" / "IMAGES", tmp_path)
    wrong = []
    for caption, name in zip(captions, names, strict=True):
        truth, pred = name.rsplit("_", 1)[0], rows[name]["pred"]
        mark = "✗" if pred != truth else "✓"
        assert caption.startswith(f"{mark} {truth} → {pred}\n{name} (")
        wrong.append(mark == "✗")
    assert any(wrong) and not all(wrong), "the tiny fixture CNN should get some test images wrong, not all"
    assert wrong == sorted(wrong, reverse=True)


def test_without_its_split_or_its_data_the_gallery_is_empty_with_a_note(checkpoints, fixture_root, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    alone = shutil.copy(checkpoints[0], tmp_path / "checkpoints" / "best.ckpt")
    items, note = split_gallery(alone, None)
    assert items == [] and "No `split.csv`" in note
    items, note = split_gallery(checkpoints[0], None, data_root=str(fixture_root / "folders"))
    assert items == [] and "cannot be listed" in note and "use the data.root the split was made from" in note


def test_a_checkpoint_in_the_wrong_slot_is_refused_naming_the_right_one(checkpoints):
    classifier, anomaly = checkpoints
    with pytest.raises(UserError, match=f"ckpt_path={anomaly} holds a model of task 'anomaly', not 'classifier': "
                                        f"pass it as anomaly_ckpt_path={anomaly}"):
        Inspector.open({"ckpt_path": str(anomaly)})
    with pytest.raises(UserError, match="detector_ckpt_path=.* not 'detector': pass it as ckpt_path="):
        Inspector.open({"detector_ckpt_path": str(classifier)})
    with pytest.raises(UserError, match="no model to serve: pass at least one of ckpt_path=<classifier run>"):
        Inspector.open({"ckpt_path": None})
    with pytest.raises(UserError, match="anomaly_ckpt_path=/nowhere.ckpt does not exist: pass anomaly_ckpt_path=<anomaly run>"):
        Inspector.open({"anomaly_ckpt_path": "/nowhere.ckpt"})


class StubDetector:
    """A detector answering two boxes in its 32 px frame, one under the page's score floor."""

    name, class_names = "stub", ["crazing", "scratches"]
    spec = {"in_chans": 3, "image_size": 32, "mean": [0.0] * 3, "std": [1.0] * 3}

    def detect(self, image):
        return {"boxes": np.array([[8, 8, 24, 16], [0, 0, 4, 4]], np.float32), "scores": np.array([0.9, 0.1]),
                "labels": np.array([1, 0])}


def test_detector_boxes_are_drawn_in_the_images_pixels_with_label_and_score(fixture_root):
    result = Inspector(detector=StubDetector(), min_score=0.3).inspect(fixture_root / "neu-det" / "IMAGES" / "crazing_1.jpg")
    assert result.found == ["scratches 0.90"]
    assert "detector: 1 box(es): scratches 0.90" in result.summary("crazing_1.jpg")
    # A 48 px image is drawn at 320 px: the box (8, 8, 24, 16) of the 32 px frame is (80, 80, 240, 160) there.
    red = np.all(result.boxes == (230, 0, 0), axis=2)
    assert result.boxes.shape == (320, 320, 3)
    assert red[80, 100:220].all() and red[159, 100:220].all() and not red[100:150, 100:220].any()
    assert not red[:60, :60].any()  # the box scored 0.1 is not drawn
