"""Graph rewrites for ONNX Runtime's CPU provider: attention and residual LayerNorm into com.microsoft ops.

ONNX Runtime's own fusions do not recognise the attention the torch exporters write (its
`optimize_model(model_type="clip")` finds none in our graph), so this module finds it by structure and
proves each match by running it: a Softmax between two MatMuls whose inputs trace back, through
Reshape / Transpose and scalar Mul / Div only, to three 3-D tensors is extracted as a small graph,
run on random inputs and compared with multi-head attention computed in numpy. Only a match that
agrees becomes a `MultiHeadAttention` node, so a layout the walker misreads is left as it was.

These ops tie a graph to ONNX Runtime, so only the `cpu` export target uses them (export/targets.py);
portable graphs never pass through here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS = "com.microsoft"
MOVES = ("Reshape", "Transpose")  # ops that only rearrange values


@dataclass
class GraphIndex:
    producer: dict
    consumers: dict
    consts: dict  # initializers and Constant-node values, as numpy arrays


def index(graph: onnx.GraphProto) -> GraphIndex:
    producer, consumers, consts = {}, {}, {}
    for init in graph.initializer:
        consts[init.name] = init
    for node in graph.node:
        for out in node.output:
            producer[out] = node
        for name in node.input:
            consumers.setdefault(name, []).append(node)
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    return GraphIndex(producer, consumers, consts)


def const(ix: GraphIndex, name: str) -> np.ndarray | None:
    tensor = ix.consts.get(name)
    return None if tensor is None else numpy_helper.to_array(tensor)


def scalar(ix: GraphIndex, name: str) -> float | None:
    value = const(ix, name)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def scalar_factor(ix: GraphIndex, node: onnx.NodeProto) -> tuple[str, float] | None:
    """(the other input, the factor) for x * c, c * x or x / c with a constant scalar c."""
    if node.op_type == "Mul":
        for i in (0, 1):
            c = scalar(ix, node.input[1 - i])
            if c is not None:
                return node.input[i], c
    if node.op_type == "Div" and (c := scalar(ix, node.input[1])):
        return node.input[0], 1.0 / c
    return None


def walk_back(ix: GraphIndex, name: str) -> tuple[str, float, list[onnx.NodeProto]]:
    """From a MatMul input back over Reshape / Transpose / scalar Mul, Div to the tensor they start from."""
    scale, nodes = 1.0, []
    while (node := ix.producer.get(name)) is not None:
        if node.op_type in MOVES:
            name = node.input[0]
        elif (found := scalar_factor(ix, node)) is not None:
            name, factor = found
            scale *= factor
        else:
            break
        nodes.append(node)
    return name, scale, nodes


def walk_forward(ix: GraphIndex, name: str) -> str:
    """From the attention MatMul's output forward over single-consumer Reshape / Transpose chains."""
    while len(users := ix.consumers.get(name, [])) == 1 and users[0].op_type in MOVES:
        name = users[0].output[0]
    return name


def head_split(ix: GraphIndex, nodes: list[onnx.NodeProto]) -> tuple[int, int, int] | None:
    """(sequence, heads, head_dim) from the first Reshape to a constant 4-D shape [b, s, heads, head_dim]."""
    for node in reversed(nodes):  # reversed: nearest the 3-D tensor first
        shape = const(ix, node.input[1]) if node.op_type == "Reshape" else None
        if shape is not None and shape.size == 4 and shape[2] > 0 and shape[3] > 0:
            return int(shape[1]), int(shape[2]), int(shape[3])
    return None


@dataclass
class Attention:
    query: str
    key: str
    value: str
    bias: str | None  # additive mask on the scores, broadcast to [batch, heads, seq, seq]
    output: str
    heads: int
    head_dim: int
    seq: int
    scale: float


def scores_source(ix: GraphIndex, name: str) -> tuple[onnx.NodeProto, str | None, float] | None:
    """Back from the Softmax input over scalar Mul / Div and one mask Add to the Q·Kᵀ MatMul."""
    bias, scale = None, 1.0
    while (node := ix.producer.get(name)) is not None:
        if node.op_type == "MatMul":
            return node, bias, scale
        if (found := scalar_factor(ix, node)) is not None:
            name, factor = found
            scale *= factor
        elif node.op_type == "Add" and bias is None:
            sides = [i for i in node.input if walks_to_matmul(ix, i)]
            if len(sides) != 1:
                return None
            name = sides[0]
            bias = node.input[1] if name == node.input[0] else node.input[0]
        else:
            return None
    return None


def walks_to_matmul(ix: GraphIndex, name: str) -> bool:
    while (node := ix.producer.get(name)) is not None and (found := scalar_factor(ix, node)) is not None:
        name = found[0]
    return node is not None and node.op_type == "MatMul"


def find_attention(ix: GraphIndex, softmax: onnx.NodeProto) -> Attention | None:
    if softmax.op_type != "Softmax" or attr(softmax, "axis", -1) not in (-1, 3):
        return None
    users = ix.consumers.get(softmax.output[0], [])
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]:
        return None
    found = scores_source(ix, softmax.input[0])
    if found is None:
        return None
    qk, bias, score_scale = found
    query, q_scale, q_nodes = walk_back(ix, qk.input[0])
    key, k_scale, _ = walk_back(ix, qk.input[1])
    value, v_scale, _ = walk_back(ix, users[0].input[1])
    split = head_split(ix, q_nodes)
    if split is None or v_scale != 1.0:
        return None
    seq, heads, head_dim = split
    return Attention(query, key, value, bias, walk_forward(ix, users[0].output[0]), heads, head_dim,
                     seq if seq > 0 else 7, q_scale * k_scale * score_scale)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def region(graph: onnx.GraphProto, ix: GraphIndex, inputs: list[str], output: str) -> list[onnx.NodeProto] | None:
    """Nodes computing `output` from `inputs` and constants alone (None if it needs anything else)."""
    needed, todo, seen = [], [output], set(inputs)
    while todo:
        name = todo.pop()
        if name in seen or name in ix.consts and name not in ix.producer:
            continue
        seen.add(name)
        node = ix.producer.get(name)
        if node is None:
            return None  # a graph input outside the attention
        needed.append(node)
        todo += [i for i in node.input if i]
    chosen = {id(n) for n in needed}
    return [n for n in graph.node if id(n) in chosen]


def reference_attention(q, k, v, bias, heads: int, scale: float) -> np.ndarray:
    b, s, _ = q.shape
    split = lambda x: x.reshape(b, x.shape[1], heads, -1).transpose(0, 2, 1, 3)  # noqa: E731
    scores = split(q) @ split(k).transpose(0, 1, 3, 2) * scale + (0 if bias is None else bias)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    return (probs @ split(v)).transpose(0, 2, 1, 3).reshape(b, s, -1)


def proves_attention(graph: onnx.GraphProto, ix: GraphIndex, att: Attention, opset: list) -> bool:
    """Run the matched region on random inputs; True if it is multi-head attention with att's heads and scale."""
    import onnxruntime as ort

    names = [n for n in (att.query, att.key, att.value, att.bias) if n]
    nodes = region(graph, ix, names, att.output)
    if nodes is None:
        return False
    inits = {i for n in nodes for i in n.input if i in ix.consts and i not in ix.producer}
    inputs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names]
    sub = helper.make_graph([onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes], "probe", inputs,
                            [helper.make_tensor_value_info(att.output, onnx.TensorProto.FLOAT, None)],
                            [t for t in (ix.consts[i] for i in inits) if isinstance(t, onnx.TensorProto)])
    rng = np.random.default_rng(0)
    dim = att.heads * att.head_dim
    feeds = {n: rng.standard_normal((2, att.seq, dim)).astype(np.float32) for n in names[:3]}
    if att.bias:
        feeds[att.bias] = rng.standard_normal((2, 1, att.seq, att.seq)).astype(np.float32)
    try:
        sess = ort.InferenceSession(helper.make_model(sub, opset_imports=opset).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        got = sess.run(None, feeds)[0]
    except Exception:  # noqa: BLE001 - any failure to run means "not proven", never a wrong fusion
        return False
    want = reference_attention(feeds[att.query], feeds[att.key], feeds[att.value], feeds.get(att.bias or ""),
                               att.heads, att.scale)
    return got.shape == want.shape and np.allclose(got, want, rtol=1e-4, atol=1e-5)


def fuse_attention(model: onnx.ModelProto) -> int:
    """Proven multi-head attention -> com.microsoft MultiHeadAttention; returns how many were fused."""
    graph = model.graph
    opset = list(model.opset_import)
    fused = 0
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        ix = index(graph)
        att = find_attention(ix, softmax)
        if att is None or not proves_attention(graph, ix, att, opset):
            continue
        mha = helper.make_node("MultiHeadAttention", [att.query, att.key, att.value, "", "", att.bias or ""],
                               [att.output], name=f"{softmax.name}_mha", domain=MS, num_heads=att.heads,
                               scale=att.scale)
        replace_producer(graph, ix.producer[att.output], mha)
        fused += 1
    if fused:
        use_domain(model, MS)
        remove_dead_nodes(graph)
    return fused


def fuse_skip_layernorm(model: onnx.ModelProto) -> int:
    """Add(x, y) -> LayerNormalization(last axis) -> com.microsoft SkipLayerNormalization (the sum kept if used)."""
    graph, fused = model.graph, 0
    for ln in [n for n in graph.node if n.op_type == "LayerNormalization"]:
        ix = index(graph)
        add = ix.producer.get(ln.input[0])
        if (add is None or add.op_type != "Add" or attr(ln, "axis", -1) != -1 or len(ln.input) < 3
                or len(ln.output) > 1 or any(i in ix.consts or i not in ix.producer for i in add.input)
                or any(i not in ix.consts for i in ln.input[1:3])):
            continue
        others = [n for n in ix.consumers.get(add.output[0], []) if n is not ln]
        keep_sum = bool(others) or add.output[0] in {o.name for o in graph.output}
        skip = helper.make_node("SkipLayerNormalization", [add.input[0], add.input[1], ln.input[1], ln.input[2]],
                                [ln.output[0], "", "", add.output[0] if keep_sum else ""], name=f"{ln.name}_skip",
                                domain=MS, epsilon=attr(ln, "epsilon", 1e-5))
        graph.node.remove(ln)
        replace_producer(graph, add, skip)
        fused += 1
    if fused:
        use_domain(model, MS)
    return fused


def replace_producer(graph: onnx.GraphProto, old: onnx.NodeProto, new: onnx.NodeProto) -> None:
    """Put `new` where `old` stood (its inputs are made earlier), dropping `old`."""
    at = list(graph.node).index(old)
    graph.node.remove(old)
    graph.node.insert(at, new)


def remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes nothing reads (the unfused chains), then initializers nothing reads."""
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in read for o in n.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {i for n in graph.node for i in n.input} | outputs
    keep = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def use_domain(model: onnx.ModelProto, domain: str, version: int = 1) -> None:
    if all(o.domain != domain for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(domain, version))


def patch_conv_as_matmul(model: onnx.ModelProto, image_size: int) -> int:
    """A ViT's patch embedding (Conv with kernel = stride, no padding) as im2col + MatMul, in standard ops.

    A MatMul is what the int8 / int4 quantizers turn into integer GEMMs; the float Conv stays float.
    Only the Conv whose output is flattened into tokens (Reshape [b, C, h·w] then Transpose to
    [b, h·w, C]) is rewritten, straight to that token tensor. `image_size`: the Conv input's H = W.
    """
    graph, done = model.graph, 0
    for conv in [n for n in graph.node if n.op_type == "Conv"]:
        ix = index(graph)
        weight = const(ix, conv.input[1])
        tokens = conv_tokens(ix, conv)
        if weight is None or weight.ndim != 4 or tokens is None or not plain_patch_conv(conv, weight, image_size):
            continue
        out_ch, in_ch, kh, kw = weight.shape
        h, w = image_size // kh, image_size // kw
        if not tokens_match(ix, conv, out_ch, h * w):
            continue  # image_size is not this Conv's input size: the -1 batch would silently absorb it
        name = conv.name or "patch"
        consts = {f"{name}_im2col_shape": np.array([-1, in_ch, h, kh, w, kw], np.int64),
                  f"{name}_tokens_shape": np.array([-1, h * w, in_ch * kh * kw], np.int64),
                  f"{name}_weight_t": weight.reshape(out_ch, -1).T.copy()}
        graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
        mm_out = tokens if len(conv.input) < 3 else f"{name}_mm"
        nodes = [helper.make_node("Reshape", [conv.input[0], f"{name}_im2col_shape"], [f"{name}_blocks"]),
                 helper.make_node("Transpose", [f"{name}_blocks"], [f"{name}_patches"], perm=[0, 2, 4, 1, 3, 5]),
                 helper.make_node("Reshape", [f"{name}_patches", f"{name}_tokens_shape"], [f"{name}_rows"]),
                 helper.make_node("MatMul", [f"{name}_rows", f"{name}_weight_t"], [mm_out], name=f"{name}_matmul")]
        if len(conv.input) > 2:
            nodes.append(helper.make_node("Add", [mm_out, conv.input[2]], [tokens]))
        at = list(graph.node).index(conv)
        graph.node.remove(conv)
        graph.node.remove(ix.producer[tokens])
        for offset, node in enumerate(nodes):
            graph.node.insert(at + offset, node)
        done += 1
    if done:
        remove_dead_nodes(graph)
    return done


def plain_patch_conv(conv: onnx.NodeProto, weight: np.ndarray, image_size: int) -> bool:
    """Kernel = stride, no padding, dilation or groups, and the kernel tiles image_size exactly."""
    kernel = list(attr(conv, "kernel_shape", weight.shape[2:]))
    return (list(attr(conv, "strides", [1, 1])) == kernel and attr(conv, "group", 1) == 1
            and not any(attr(conv, "pads", [0])) and all(d == 1 for d in attr(conv, "dilations", [1, 1]))
            and attr(conv, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
            and image_size % kernel[0] == 0 and image_size % kernel[1] == 0)


def tokens_match(ix: GraphIndex, conv: onnx.NodeProto, channels: int, patches: int) -> bool:
    """The flattening Reshape's constant shape says [b, channels, patches]: image_size agrees with the graph."""
    shape = const(ix, ix.consumers[conv.output[0]][0].input[1])
    return int(shape[1]) == channels and int(shape[2]) == patches


def conv_tokens(ix: GraphIndex, conv: onnx.NodeProto) -> str | None:
    """The [b, h·w, C] token tensor a Conv's output becomes (Reshape to 3-D, Transpose 0,2,1), if that is all."""
    users = ix.consumers.get(conv.output[0], [])
    if len(users) != 1 or users[0].op_type != "Reshape":
        return None
    shape = const(ix, users[0].input[1])
    after = ix.consumers.get(users[0].output[0], [])
    if shape is None or shape.size != 3 or len(after) != 1 or after[0].op_type != "Transpose":
        return None
    return after[0].output[0] if attr(after[0], "perm") == [0, 2, 1] else None
