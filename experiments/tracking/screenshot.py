"""Screenshot a page that a JavaScript app renders, once it shows a given text, through headless Chromium.

``chromium --headless --screenshot --virtual-time-budget=...`` never returned on MLflow's UI here
(virtual time waits on requests the UI keeps open), and without the budget it captures the loading
skeleton; so this drives Chromium over its DevTools protocol and waits for the page's own text.

    python experiments/tracking/screenshot.py URL OUT.png --wait-for TEXT [--size 1400x900] [--click LABEL ...]

``--click`` presses the buttons of that aria-label first (e.g. ``Close`` for a side panel).
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import tempfile
import time
import urllib.request

import websocket

PORT = 9333


def page_socket(timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json"))
            return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        except (OSError, StopIteration):
            time.sleep(0.5)
    raise SystemExit(f"Chromium's DevTools did not answer on port {PORT} within {timeout} s")


def main(url: str, out: str, text: str, size: str, clicks: list[str], timeout: float = 180) -> None:
    width, height = size.split("x")
    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={PORT}",
         f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp()}", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ws = websocket.create_connection(page_socket(), timeout=timeout, suppress_origin=True)
        calls = iter(range(1, 10**6))

        def call(method: str, **params):
            ident = next(calls)
            ws.send(json.dumps({"id": ident, "method": method, "params": params}))
            while (reply := json.loads(ws.recv())).get("id") != ident:
                pass
            return reply["result"]

        deadline = time.time() + timeout
        probe = f"document.body && document.body.innerText.includes({json.dumps(text)})"
        while not call("Runtime.evaluate", expression=probe)["result"].get("value"):
            if time.time() > deadline:
                raise SystemExit(f"{url} did not show {text!r} within {timeout} s")
            time.sleep(1)
        for label in clicks:
            call("Runtime.evaluate", expression=f"document.querySelectorAll('button[aria-label={json.dumps(label)}]')"
                                                ".forEach(b => b.click())")
        time.sleep(3)  # let the rest of the table settle
        png = call("Page.captureScreenshot", format="png")["data"]
        with open(out, "wb") as handle:
            handle.write(base64.b64decode(png))
    finally:
        browser.terminate()
        browser.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("out")
    parser.add_argument("--wait-for", required=True, help="text the page shows once rendered")
    parser.add_argument("--size", default="1400x900", help="window WIDTHxHEIGHT")
    parser.add_argument("--click", action="append", default=[], help="aria-label of buttons to press first")
    args = parser.parse_args()
    main(args.url, args.out, args.wait_for, args.size, args.click)
