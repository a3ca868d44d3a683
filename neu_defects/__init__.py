"""neu-defects: a Lightning + Hydra framework for steel-surface defect inspection on NEU."""

__version__ = "0.1.0"
