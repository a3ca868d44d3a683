"""How long the inspection page takes to answer one image, per model alone and all together.

A developer's tool, run by hand. For each slot given (and then all of them at once) it serves the page
in this process, submits ``--images`` test images through Gradio's Python client, as a browser would,
and prints the median and 95th percentile of two times: the models' own (``Inspector.inspect``,
the "answered in" of the page) and the client's round trip (upload, queue, PNG encoding, download).
The first image of each configuration warms up and is not counted.

    NEU_DATA_DIR=/path/to/NEU-DET OMP_NUM_THREADS=1 taskset -c 0 python experiments/app/latency.py \\
        ckpt_path=<cnn run>/checkpoints/best.ckpt anomaly_ckpt_path=… detector_ckpt_path=… --images 30
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import numpy as np
from gradio_client import Client, handle_file
from hydra import compose, initialize_config_dir

from neu_defects.data.index import build_index
from neu_defects.workflows.app import serve
from neu_defects.workflows.inspection import SLOTS

CONF = Path(__file__).resolve().parents[2] / "conf"


def measure(overrides: list[str], files: list[Path]) -> tuple[list[float], list[float]]:
    """(model seconds, round-trip seconds) per file after the first."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="app", overrides=[*overrides, "quiet=true",
                                                    f"paths.output_dir={tempfile.mkdtemp()}"])
    page = serve(cfg, prevent_thread_lock=True)
    try:
        client = Client(page.local_url, verbose=False)
        model, round_trip = [], []
        for path in files:
            start = time.perf_counter()
            status = client.predict(handle_file(path), api_name="/inspect")[0]
            round_trip.append(time.perf_counter() - start)
            model.append(float(re.search(r"answered in (\d+) ms", status).group(1)) / 1000)
        return model[1:], round_trip[1:]
    finally:
        page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="conf/app.yaml overrides: the checkpoints, data_root …")
    parser.add_argument("--images", type=int, default=30, help="NEU images to submit per configuration")
    args = parser.parse_args()
    given = [o for o in args.overrides if o.split("=", 1)[0] in SLOTS]
    rest = [o for o in args.overrides if o not in given]
    index = build_index()
    # Spread over the classes: every (dataset size / n)-th image of the index, which is sorted by class.
    step = max(1, len(index.samples) // (args.images + 1))
    files = [index.abspath(s) for s in index.samples[::step]][: args.images + 1]
    print("| models | images | model ms, median / p95 | round trip ms, median / p95 |\n|---|---|---|---|")
    for chosen in ([[o] for o in given] + ([given] if len(given) > 1 else [])):
        model, round_trip = measure([*chosen, *rest], files)
        name = " + ".join(SLOTS[o.split("=", 1)[0]] for o in chosen)
        cells = [f"{np.median(t) * 1000:.0f} / {np.percentile(t, 95) * 1000:.0f}" for t in (model, round_trip)]
        print(f"| {name} | {len(model)} | {cells[0]} | {cells[1]} |", flush=True)


if __name__ == "__main__":
    main()
