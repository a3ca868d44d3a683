"""Screenshot of the inspection page after an image was inspected, in a real headless browser (docs/app.png).

A developer's tool, run by hand; it needs Chromium and its driver (Debian: ``apt-get install chromium
chromium-driver``) and Selenium (``pip install selenium``, not a dependency of the project). It serves the
page in this process, as ``python -m neu_defects.app`` would, opens it in headless Chromium, clicks the
gallery's first thumbnail (the classifier's first mistake) or uploads ``--image``, waits until every
panel is drawn and saves the window:

    NEU_DATA_DIR=/path/to/NEU-DET python experiments/app/screenshot.py \\
        ckpt_path=<cnn run>/checkpoints/best.ckpt anomaly_ckpt_path=<anomaly run>/checkpoints/best.ckpt \\
        detector_ckpt_path=<detector run>/checkpoints/best.ckpt --output docs/app.png

Any ``key=value`` argument is an override of ``conf/app.yaml``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from neu_defects.workflows.app import serve

CONF = Path(__file__).resolve().parents[2] / "conf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="overrides of conf/app.yaml, e.g. ckpt_path=…")
    parser.add_argument("--image", type=Path, help="upload this file instead of clicking the first thumbnail")
    parser.add_argument("--output", type=Path, default=Path("docs/app.png"))
    parser.add_argument("--size", default="1400,1000", help="browser window, width,height in pixels")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the page and each answer")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="app", overrides=[*args.overrides, f"paths.output_dir={tempfile.mkdtemp()}"])
    page = serve(cfg, prevent_thread_lock=True)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.size}",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    # The driver named explicitly: Selenium would otherwise try to download one.
    browser = webdriver.Chrome(service=Service(args.chromedriver), options=options)
    try:
        # --window-size sizes the window, not the page: add what the browser's own frame takes.
        width, height = (int(v) for v in args.size.split(","))
        frame = browser.execute_script("return [window.outerWidth - window.innerWidth, "
                                       "window.outerHeight - window.innerHeight];")
        browser.set_window_size(width + frame[0], height + frame[1])
        browser.get(page.local_url)
        wait = WebDriverWait(browser, args.timeout)
        if args.image:
            browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(args.image.resolve()))
        else:
            first = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "button.thumbnail-item")))
            # The browser decoding thumbnails on the same core would be timed as the models' answer.
            wait.until(lambda b: b.execute_script(
                "return [...document.querySelectorAll('.gallery-item img')].slice(0, 8)"
                ".every(i => i.complete && i.naturalWidth > 0);"))
            first.click()
        wait.until(expected_conditions.text_to_be_present_in_element((By.TAG_NAME, "body"), "answered in"))
        # The status line comes with the images: wait until every output image has loaded.
        wait.until(lambda b: b.execute_script(
            "const imgs = [...document.querySelectorAll('img')].filter(i => !i.closest('.gallery-item'));"
            "return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"))
        args.output.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(args.output))
        print(f"saved {args.output}")
    finally:
        browser.quit()
        page.close()


if __name__ == "__main__":
    main()
