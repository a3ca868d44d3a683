"""``python -m neu_defects.benchmark``: how fast the framework trains and infers on this machine.

See ``neu_defects.workflows.benchmark`` for what is timed.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from neu_defects.core.cli import exit_on_user_error
from neu_defects.workflows.benchmark import benchmark


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(benchmark)(cfg)


if __name__ == "__main__":
    main()
