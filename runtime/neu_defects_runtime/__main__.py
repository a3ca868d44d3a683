import sys

from neu_defects_runtime.cli import main

sys.exit(main())
