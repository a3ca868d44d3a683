"""The toy classifier of conftest.py as a TFLite flatbuffer, written with LiteRT's own schema (no torch).

MEAN over the image, then FULLY_CONNECTED: the same logits as the ONNX toy. The full-integer
variant takes int8 pixels and returns int8 logits (DEQUANTIZE first, QUANTIZE last), as a
calibrated ``quantize=int8`` export does, so the runtime's own (de)quantisation is exercised.
"""

from __future__ import annotations

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

INPUT_SCALE, INPUT_ZERO = 0.02, 3
OUTPUT_SCALE, OUTPUT_ZERO = 0.05, -2


def _buffer(values: np.ndarray | None = None) -> schema.BufferT:
    buffer = schema.BufferT()
    buffer.data = None if values is None else np.frombuffer(values.tobytes(), dtype=np.uint8)
    return buffer


def _tensor(name: str, shape: list[int], kind: int, buffer: int = 0,
            quantization: tuple[float, int] | None = None) -> schema.TensorT:
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.type, tensor.buffer = name, shape, kind, buffer
    if quantization is not None:
        tensor.quantization = schema.QuantizationParametersT()
        tensor.quantization.scale, tensor.quantization.zeroPoint = [quantization[0]], [quantization[1]]
    return tensor


def _operator(code: int, inputs: list[int], outputs: list[int], options_type: int, options) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, inputs, outputs
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def toy_tflite(size: int, weights: np.ndarray, biases: np.ndarray, full_integer: bool = False) -> bytes:
    f32, i8, i32 = schema.TensorType.FLOAT32, schema.TensorType.INT8, schema.TensorType.INT32
    classes = len(weights)
    tensors = [_tensor("image", [1, 1, size, size], i8 if full_integer else f32, 0,
                       (INPUT_SCALE, INPUT_ZERO) if full_integer else None),
               _tensor("axes", [2], i32, 1), _tensor("mean", [1, 1], f32),
               _tensor("weights", [classes, 1], f32, 2), _tensor("biases", [classes], f32, 3),
               _tensor("logits", [1, classes], f32)]
    codes = [schema.BuiltinOperator.MEAN, schema.BuiltinOperator.FULLY_CONNECTED]
    reducer = schema.ReducerOptionsT()
    reducer.keepDims = False
    operators = [_operator(0, [6 if full_integer else 0, 1], [2], schema.BuiltinOptions.ReducerOptions, reducer),
                 _operator(1, [2, 3, 4], [5], schema.BuiltinOptions.FullyConnectedOptions,
                           schema.FullyConnectedOptionsT())]
    inputs, outputs = [0], [5]
    if full_integer:
        tensors += [_tensor("image_float", [1, 1, size, size], f32),
                    _tensor("logits_int8", [1, classes], i8, 0, (OUTPUT_SCALE, OUTPUT_ZERO))]
        codes += [schema.BuiltinOperator.DEQUANTIZE, schema.BuiltinOperator.QUANTIZE]
        operators.insert(0, _operator(2, [0], [6], schema.BuiltinOptions.DequantizeOptions,
                                      schema.DequantizeOptionsT()))
        operators.append(_operator(3, [5], [7], schema.BuiltinOptions.QuantizeOptions, schema.QuantizeOptionsT()))
        outputs = [7]

    subgraph = schema.SubGraphT()
    subgraph.tensors, subgraph.inputs, subgraph.outputs, subgraph.operators = tensors, inputs, outputs, operators
    model = schema.ModelT()
    model.version, model.description, model.subgraphs = 3, "neu-defects-runtime test toy", [subgraph]
    model.operatorCodes = []
    for code in codes:
        entry = schema.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, code, 1
        model.operatorCodes.append(entry)
    model.buffers = [_buffer(), _buffer(np.array([2, 3], np.int32)),
                     _buffer(np.asarray(weights, np.float32).reshape(classes, 1)),
                     _buffer(np.asarray(biases, np.float32))]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
