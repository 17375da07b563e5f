"""A small builder for ONNX graphs on top of ``onnx.helper``: unique names, initializers,
cached constants, and subgraphs (Scan bodies) that share the outer graph's names."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["GraphBuilder"]


class GraphBuilder:
    """Collects nodes and initializers of one graph. ``op`` appends a node and returns its
    output name(s); names are made unique across the graph and its subgraphs (ONNX requires
    every name to be assigned once in the whole model)."""

    def __init__(self, onnx: Any, parent: GraphBuilder | None = None) -> None:
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes: list[Any] = []
        # Values renamed to graph outputs by `output` (a second output of one value copies).
        self._renamed_outputs: dict[str, str] = {}
        self._parent = parent
        self._root: GraphBuilder = self if parent is None else parent._root
        if parent is None:
            self.initializers: list[Any] = []
            self._names: set[str] = set()
            self._consts: dict[tuple, str] = {}

    # Names ---------------------------------------------------------------------------------------

    def name(self, base: str) -> str:
        """A fresh name starting with ``base``."""
        names = self._root._names
        n, k = base, 1
        while n in names:
            n = f"{base}_{k}"
            k += 1
        names.add(n)
        return n

    def reserve(self, name: str) -> str:
        """Claims ``name`` exactly (graph inputs and outputs keep the names users see)."""
        if name in self._root._names:
            raise ValueError(f"ONNX name {name!r} is used twice")
        self._root._names.add(name)
        return name

    # Tensors -------------------------------------------------------------------------------------

    def init(self, base: str, array: np.ndarray) -> str:
        """An initializer of the outer graph (a subgraph reads it from the outer scope)."""
        name = self.name(base)
        arr = np.ascontiguousarray(array)
        self._root.initializers.append(self.onnx.numpy_helper.from_array(arr, name))
        return name

    def const(self, values: Any, dtype: Any) -> str:
        """A cached constant initializer: a scalar when ``values`` is a number, else 1-D."""
        arr = np.asarray(values, dtype=dtype)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        cache = self._root._consts
        if key not in cache:
            cache[key] = self.init(f"const_{arr.dtype.name}", arr)
        return cache[key]

    def i64(self, values: Any) -> str:
        return self.const(values, np.int64)

    def f32(self, values: Any) -> str:
        return self.const(values, np.float32)

    # Nodes ---------------------------------------------------------------------------------------

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any):
        """Appends a node; returns its output name (or a list when ``outputs`` is a count > 1
        or a list of names)."""
        if isinstance(outputs, int):
            names = [self.name(op_type.lower()) for _ in range(outputs)]
            single = outputs == 1
        else:
            names = list(outputs)
            single = False
        self.nodes.append(
            self.helper.make_node(
                op_type, list(inputs), names, name=self.name(f"{op_type}_node"), **attrs
            )
        )
        return names[0] if single else names

    def output(self, src: str, name: str) -> None:
        """Makes ``src`` available as the graph output ``name``: the node computing ``src``
        writes ``name`` directly when it can (no copy at run time), else an Identity does."""
        name = self.reserve(name)
        producers = [n for n in self.nodes if src in n.output]
        if producers and src not in self._renamed_outputs:
            for n in self.nodes:
                for field in (n.input, n.output):
                    for k, v in enumerate(field):
                        if v == src:
                            field[k] = name
            self._renamed_outputs[src] = name
        else:
            self.op("Identity", [self._renamed_outputs.get(src, src)], [name])

    def subgraph(self) -> GraphBuilder:
        """A builder for a subgraph (a Scan or Loop body) sharing this graph's names."""
        return GraphBuilder(self.onnx, parent=self)

    def value_info(self, name: str, elem: int, shape: list[Any]) -> Any:
        return self.helper.make_tensor_value_info(name, elem, shape)

    def graph(self, name: str, inputs: list[Any], outputs: list[Any]) -> Any:
        """The GraphProto; a subgraph carries no initializers of its own."""
        inits = self.initializers if self._parent is None else []
        return self.helper.make_graph(self.nodes, name, inputs, outputs, inits)
