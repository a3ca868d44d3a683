"""``python -m neu_defects_runtime MODEL [INPUT] --output preds.csv [--threads N] [--watch DIR]``.

INPUT is an image, a folder (searched recursively) or a quoted glob; the CSV is written whole at
the end, with the columns of ``python -m neu_defects.predict``. ``--watch DIR`` then keeps answering
each image that lands in DIR, appending one flushed row at a time, until Ctrl-C (exit 0). A file
that cannot be decoded is listed on stderr and skipped; any other mistake is one line on stderr
and exit 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from neu_defects_runtime.errors import InputError
from neu_defects_runtime.models import open_model
from neu_defects_runtime.preprocess import find_images
from neu_defects_runtime.rows import Answerer, columns
from neu_defects_runtime.sinks import AppendingCsv, write_whole
from neu_defects_runtime.watch import watch


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m neu_defects_runtime", description=__doc__.split("\n\n")[1])
    p.add_argument("model", help="an export of python -m neu_defects.export: .tflite (with its .json) or .onnx")
    p.add_argument("input", nargs="?", help="an image, a folder (recursive) or a quoted glob such as 'shots/*.png'")
    p.add_argument("--output", "-o", required=True, type=Path, help="the CSV to write (with --watch: to append to)")
    p.add_argument("--threads", type=int, default=0, help="interpreter threads; 0 (default) uses every core")
    p.add_argument("--watch", type=Path, metavar="DIR", help="keep answering images that land in DIR until Ctrl-C")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between two looks at the --watch folder")
    p.add_argument("--settle", type=float, default=1.0,
                   help="seconds a file must stay unchanged before it is taken (it may still be arriving)")
    p.add_argument("--min-score", type=float, default=0.3, help="detectors: the lowest box score written")
    return p


def run_batch(answer: Answerer, spec: str, output: Path, header: list[str]) -> None:
    files = find_images(spec)
    rows, skipped = [], []
    for path in files:
        try:
            rows.extend(answer(path))
        except InputError as err:
            skipped.append(str(err))
    for reason in skipped:
        print(f"skipped {reason}", file=sys.stderr)
    if len(skipped) == len(files):
        raise InputError(f"none of the {len(files)} files under {spec} could be read as an image; nothing was written")
    write_whole(output, header, rows)
    print(f"{len(files) - len(skipped)} images ({answer.model.backend}) -> {output}"
          + (f"; {len(skipped)} unreadable files skipped (listed above)" if skipped else ""), file=sys.stderr)


def run_watch(answer: Answerer, folder: Path, output: Path, header: list[str], interval: float,
              settle: float) -> None:
    if not folder.is_dir():
        raise InputError(f"--watch {folder} is not a folder: pass the folder new images land in")
    sink = AppendingCsv(output, header)
    print(f"watching {folder} ({answer.model.backend}) -> {output}; Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        watch(folder, answer, sink, interval, settle)
    except KeyboardInterrupt:
        pass
    finally:
        sink.close()
    print(f"stopped; {len(sink.done)} images in {output}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # A service manager stops with SIGTERM: end as Ctrl-C does, rows already written kept. SIGINT is
    # set too: a process started in the background of a script inherits it ignored, and Ctrl-C or
    # `kill -INT` must still stop the watch.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if args.input is None and args.watch is None:
            raise InputError("nothing to do: pass INPUT (an image, a folder or a glob), --watch DIR, or both")
        if not 0 <= args.min_score <= 1:
            raise InputError(f"--min-score {args.min_score}: pass a score between 0 and 1")
        if args.interval <= 0 or args.settle < 0:
            raise InputError(f"--interval {args.interval} --settle {args.settle}: pass a positive interval and a "
                             "settle time of 0 or more seconds")
        answer = Answerer(open_model(args.model, args.threads), args.min_score)
        header = columns(answer.record)
        if args.input is not None:
            run_batch(answer, args.input, args.output, header)
        if args.watch is not None:
            run_watch(answer, args.watch, args.output, header, args.interval, args.settle)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
