"""Joining converted `.tflite` graphs into one file, without converting anything again.

The RGB variant (`pneumocnn.edge.rgb`) is the grayscale int8 model with float32 layers before and
after it, and its guard head (`pneumocnn.edge.guard_head`) a float32 graph beside it. Converting
such a whole again calibrates its int8 network a second time: that came out as the grayscale
file's in every export measured, but nothing in the converter promises it. Grafting the converted
graphs together keeps every graph's tensors, operators and constants byte for byte, so the variant
computes what the grayscale int8 file computes by construction.

TensorFlow's `flatbuffer_utils` reads and writes the flatbuffers; the joining itself (copying one
subgraph's tensors, operators, constants and operator codes into another's) is written here
because neither TensorFlow nor LiteRT offers it.
"""

from __future__ import annotations

import copy

import numpy as np
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils


def read(model: bytes):
    """A `.tflite` flatbuffer as TensorFlow's mutable object tree (`schema.ModelT`)."""
    return flatbuffer_utils.read_model_from_bytearray(bytearray(model))


def write(tree) -> bytes:
    """The object tree (see `read`) as a `.tflite` flatbuffer."""
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def _same_code(a, b) -> bool:
    return (a.builtinCode, a.deprecatedBuiltinCode, a.customCode, a.version) == (
        b.builtinCode,
        b.deprecatedBuiltinCode,
        b.customCode,
        b.version,
    )


def _code_index(tree, code) -> int:
    """The index of `code` among `tree`'s operator codes, added when it is not there."""
    for index, known in enumerate(tree.operatorCodes):
        if _same_code(known, code):
            return index
    tree.operatorCodes.append(copy.deepcopy(code))
    return len(tree.operatorCodes) - 1


def append_graph(tree, graft, joined: dict[int, int], prefix: bytes) -> tuple[list, dict[int, int]]:
    """Copies the one subgraph of `graft` into `tree`'s first subgraph.

    Its constant buffers and tensors are appended (tensor names prefixed), except the tensors
    that `joined` maps onto tensors `tree` already has; its operators are returned, not placed,
    so the caller sets their order.

    Args:
        tree: the model to add to (`read`); changed in place.
        graft: the model to copy from (`read`); not changed.
        joined: `{graft tensor index: tree tensor index}` for the tensors the two share.
        prefix: put before the names of the copied tensors.

    Returns:
        A tuple `(operators, tensor_index)`: the copied operators, rewired to `tree`'s tensors,
        and `{graft tensor index: tree tensor index}` for every tensor of `graft`.
    """
    target, source = tree.subgraphs[0], graft.subgraphs[0]
    buffer_base = len(tree.buffers)
    tree.buffers += [copy.deepcopy(buffer) for buffer in graft.buffers]
    tensor_index = dict(joined)
    for index, tensor in enumerate(source.tensors):
        if index in joined:
            continue
        tensor = copy.deepcopy(tensor)
        tensor.buffer = buffer_base + tensor.buffer
        tensor.name = prefix + (tensor.name or b"")
        tensor_index[index] = len(target.tensors)
        target.tensors.append(tensor)
    codes = [_code_index(tree, code) for code in graft.operatorCodes]
    operators = []
    for operator in source.operators:
        operator = copy.deepcopy(operator)
        operator.opcodeIndex = codes[operator.opcodeIndex]
        operator.inputs = np.asarray(
            [tensor_index[i] if i >= 0 else i for i in operator.inputs], np.int32
        )
        operator.outputs = np.asarray([tensor_index[i] for i in operator.outputs], np.int32)
        operators.append(operator)
    return operators, tensor_index


def _builtin(tree, op: int, inputs: list[int], outputs: list[int]):
    """A builtin operator without options (QUANTIZE, DEQUANTIZE) on `tree`'s tensors."""
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = op, min(op, 127), 1
    operator = schema.OperatorT()
    operator.opcodeIndex = _code_index(tree, code)
    operator.inputs = np.asarray(inputs, np.int32)
    operator.outputs = np.asarray(outputs, np.int32)
    return operator


def sandwich(front: bytes, middle: bytes, back: bytes) -> bytes:
    """One graph: `front` (float32), then the quantized `middle`, then `back` (float32).

    `front`'s output is quantized (TFLite's QUANTIZE, with `middle`'s input quantization) into
    `middle`'s input; `middle`'s output is dequantized into `back`'s input. `middle`'s tensors,
    operators and constants are kept as they are, so on the same input it computes exactly what
    the `middle` file computes alone. The signature keeps `middle`'s names, with `front`'s input
    and `back`'s output. Pass the files as converted, without embedded TFLite metadata: embed
    the joined file's own afterwards.

    Args:
        front: a float32 `.tflite` with one input and one output, the output shaped as
            `middle`'s input.
        middle: a full-integer `.tflite` with one input and one output (uint8 or int8).
        back: a float32 `.tflite` with one input, shaped as `middle`'s output, and one output.

    Returns:
        The joined `.tflite` flatbuffer: `front`'s input in, `back`'s output out.

    Raises:
        ValueError: if a graph has more than one input, output or subgraph, or the shapes where
            they meet differ.
    """
    tree, head, tail = read(middle), read(front), read(back)
    for name, model in (("front", head), ("middle", tree), ("back", tail)):
        graph = model.subgraphs[0]
        if len(model.subgraphs) != 1 or len(graph.inputs) != 1 or len(graph.outputs) != 1:
            raise ValueError(
                f"The {name} graph has {len(model.subgraphs)} subgraph(s), "
                f"{len(graph.inputs)} input(s) and {len(graph.outputs)} output(s); need 1 each."
            )
    graph = tree.subgraphs[0]
    middle_in, middle_out = graph.inputs[0], graph.outputs[0]
    front_out = head.subgraphs[0].tensors[head.subgraphs[0].outputs[0]]
    back_in = tail.subgraphs[0].tensors[tail.subgraphs[0].inputs[0]]
    for where, outer, inner in (
        ("front's output and the middle's input", front_out, graph.tensors[middle_in]),
        ("middle's output and the back's input", graph.tensors[middle_out], back_in),
    ):
        if list(outer.shape) != list(inner.shape):
            raise ValueError(
                f"The {where} differ in shape: {list(outer.shape)} and {list(inner.shape)}."
            )
    front_ops, front_index = append_graph(tree, head, {}, b"front/")
    back_ops, back_index = append_graph(tree, tail, {}, b"back/")
    new_in = front_index[head.subgraphs[0].inputs[0]]
    new_out = back_index[tail.subgraphs[0].outputs[0]]
    quantize = _builtin(
        tree,
        schema.BuiltinOperator.QUANTIZE,
        [front_index[head.subgraphs[0].outputs[0]]],
        [middle_in],
    )
    dequantize = _builtin(
        tree,
        schema.BuiltinOperator.DEQUANTIZE,
        [middle_out],
        [back_index[tail.subgraphs[0].inputs[0]]],
    )
    graph.operators = [*front_ops, quantize, *graph.operators, dequantize, *back_ops]
    graph.inputs = np.asarray([new_in], np.int32)
    graph.outputs = np.asarray([new_out], np.int32)
    for signature in tree.signatureDefs or []:
        signature.inputs[0].tensorIndex = new_in
        signature.outputs[0].tensorIndex = new_out
    return write(tree)


def prepend(front: bytes, model: bytes) -> bytes:
    """`model` with the float32 graph `front` before it: `front`'s output becomes `model`'s
    input tensor, and `front`'s input the new input.

    `model`'s tensors, operators and constants are kept as they are (every output it has, the
    guard head's too, now reads what `front` writes). Embedded TFLite metadata is dropped with
    the packed files: embed it again.

    Args:
        front: a float32 `.tflite` with one input and one output, the output shaped and typed
            as `model`'s input.
        model: a `.tflite` with one input (float32) and one subgraph.

    Returns:
        The joined `.tflite` flatbuffer.

    Raises:
        ValueError: if a graph has more than one input or subgraph, or the output of `front`
            and the input of `model` differ in shape or type.
    """
    tree, head = read(model), read(front)
    graph, source = tree.subgraphs[0], head.subgraphs[0]
    if len(tree.subgraphs) != 1 or len(graph.inputs) != 1 or len(source.outputs) != 1:
        raise ValueError(
            f"Prepending needs one subgraph and one input, and a front with one output. "
            f"Received: {len(tree.subgraphs)} subgraph(s), {len(graph.inputs)} input(s), a "
            f"front with {len(source.outputs)} output(s)."
        )
    inner, outer = graph.tensors[graph.inputs[0]], source.tensors[source.outputs[0]]
    if list(inner.shape) != list(outer.shape) or inner.type != outer.type:
        raise ValueError(
            f"The front's output is {list(outer.shape)} (type {outer.type}), the model's input "
            f"{list(inner.shape)} (type {inner.type}): build the front for the model's input."
        )
    operators, index = append_graph(tree, head, {source.outputs[0]: graph.inputs[0]}, b"front/")
    new_input = index[source.inputs[0]]
    graph.operators = [*operators, *graph.operators]
    graph.inputs = np.asarray([new_input], np.int32)
    for signature in tree.signatureDefs or []:
        signature.inputs[0].tensorIndex = new_input
    return write(tree)
