"""neu-defects: a Lightning + Hydra framework for steel-surface defect inspection on NEU."""

from omegaconf import OmegaConf

__version__ = "0.1.0"

# Configs choose a default by a flag (a backbone's input size with or without pretrained weights);
# registered on import so that every entry point, test and notebook composing conf/ resolves it.
if not OmegaConf.has_resolver("if_else"):
    OmegaConf.register_new_resolver("if_else", lambda flag, then, otherwise: then if flag else otherwise)
