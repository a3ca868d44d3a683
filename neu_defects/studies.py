"""``python -m neu_defects.studies SWEEP_DIR [--study cv5|data_efficiency|robustness]``: rebuild a study's table.

See ``neu_defects.reporting.studies`` for what each study writes.
"""

from __future__ import annotations

import sys

from neu_defects.core.cli import exit_on_user_error
from neu_defects.reporting.studies import STUDIES, write_study


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    study = None
    if len(args) == 3 and args[1] == "--study":
        study = args[2]
    elif len(args) != 1:
        print(f"usage: python -m neu_defects.studies SWEEP_DIR [--study {'|'.join(STUDIES)}]", file=sys.stderr)
        sys.exit(2)
    print(exit_on_user_error(write_study)(args[0], study).read_text())


if __name__ == "__main__":
    main()
