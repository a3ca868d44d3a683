"""Shipping a trained classifier: ONNX export with its preprocessing recorded, and the inference
backends (PyTorch, ONNX Runtime) that run it on image files."""
