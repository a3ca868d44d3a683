"""neu-defects-runtime: a neu-defects export (TFLite or ONNX) answering image files, without torch.

``preprocess`` feeds a model as training did, ``models`` opens an export with its record,
``rows`` turns an answer into predict's CSV rows, ``watch`` follows a folder; ``cli`` is
``python -m neu_defects_runtime``.
"""

__version__ = "0.1.0"
