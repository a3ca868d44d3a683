"""Models: plain ``nn.Module`` nets (``nets/``) apart from the LightningModules that train them."""
