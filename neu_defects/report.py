"""``python -m neu_defects.report SWEEP_DIR``: rebuild a multirun's summary tables and figure.

See ``neu_defects.reporting.sweep`` for what it writes.
"""

from __future__ import annotations

import sys

from neu_defects.core.cli import exit_on_user_error
from neu_defects.reporting.sweep import write_summary


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m neu_defects.report SWEEP_DIR", file=sys.stderr)
        sys.exit(2)
    exit_on_user_error(write_summary)(args[0])


if __name__ == "__main__":
    main()
