"""The plain functions behind the entry points: ``train(cfg)``, ``evaluate(cfg)``, ``export(cfg)``, ...

Each takes a composed Hydra config and returns what it measured; the modules at the top of the
package only wrap them for the command line. ``builders`` holds what they share: turning a config
into a model, a data module and a trainer, or a checkpoint into a model and its data.
"""
