"""`cnnlab summary`: the layer table of the model the current params build, without training,
and (--explain) how each layer's output shape and parameter count follow from the formulas:

    conv and pooling side   out = (W - F + 2P) / S + 1   (rounded down; "same" pads so out = ceil(W / S))
    Conv2D parameters       filters x (k x k x C_in) + filters
    SeparableConv2D         k x k x C_in (depthwise) + C_in x filters (pointwise) + filters
    Dense parameters        units x (inputs + 1)

Every computed value is checked against what Keras built.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from stages.artifacts import META_FILE, read_meta
from stages.config import Params
from stages.models import (
    build_model, check_architecture, layer_table, parameter_totals, same_padding, window_output,
)


def model_summary(params: Params, prepared_dir: str | Path) -> dict:
    """Build the model for `params` and the shapes in meta.json; its layer table and totals."""
    from stages.runtime import import_tensorflow

    meta = read_meta(Path(prepared_dir) / META_FILE)
    check_architecture(params.model, meta["image_shape"])  # before TensorFlow starts
    import_tensorflow()
    # Pretrained weights change no shape or count: never download them just to show the table.
    model_params = dataclasses.replace(params.model, base_weights="none")
    model = build_model(model_params, tuple(meta["image_shape"]), meta["num_classes"], meta.get("normalization"))
    if params.model.architecture == "transfer" and params.train.fine_tune_epochs:
        from stages.transfer import find_base, set_base_trainable_layers

        set_base_trainable_layers(find_base(model), 0)  # as training starts: the head alone learns
    explained = [explain_layer(layer) for layer in model.layers if type(layer).__name__ != "InputLayer"]
    return {"name": model.name, "input_shape": list(meta["image_shape"]), "num_classes": meta["num_classes"],
            "layers": layer_table(model), **parameter_totals(model), "explained": explained}


# --- formulas ---------------------------------------------------------------------------------------
def _number(value: int) -> str:
    return f"{value:,}"


def sliding_window(size: int, window: int, stride: int, padding: str) -> tuple[int, str]:
    """Output side of a convolution or pooling window, with the formula filled in."""
    total_padding = same_padding(size, window, stride) if padding == "same" else 0
    out = window_output(size, window, stride, padding)
    exact = (size - window + total_padding) % stride == 0
    body = f"({size} − {window} + {total_padding})/{stride}"
    note = f" (padding same: 2P = {total_padding})" if padding == "same" else ""
    return out, f"(W − F + 2P)/S + 1 = {body if exact else '⌊' + body + '⌋'} + 1 = {out}{note}"


def spatial_formula(in_shape, window, stride, padding) -> tuple[tuple, str]:
    """(height, width) after a window layer, with one formula per side (one if both agree)."""
    height, text_h = sliding_window(in_shape[1], window[0], stride[0], padding)
    width, text_w = sliding_window(in_shape[2], window[1], stride[1], padding)
    text = text_h if text_h == text_w else f"height {text_h}; width {text_w}"
    return (height, width), text


def explain_conv(layer, in_shape) -> tuple[list, int, str, str]:
    config = layer.get_config()
    (height, width), shape_text = spatial_formula(
        in_shape, config["kernel_size"], config["strides"], config["padding"])
    filters, (k_h, k_w), c_in = config["filters"], config["kernel_size"], in_shape[3]
    params = filters * k_h * k_w * c_in + (filters if config["use_bias"] else 0)
    if config["use_bias"]:
        params_text = f"filters × (k × k × C_in) + filters = {filters} × ({k_h} × {k_w} × {c_in}) + {filters}"
    else:
        params_text = f"filters × (k × k × C_in), no bias = {filters} × ({k_h} × {k_w} × {c_in})"
    params_text += f" = {_number(params)}"
    return [None, height, width, filters], params, shape_text, params_text


def explain_separable_conv(layer, in_shape) -> tuple[list, int, str, str]:
    config = layer.get_config()
    (height, width), shape_text = spatial_formula(
        in_shape, config["kernel_size"], config["strides"], config["padding"])
    filters, (k_h, k_w), c_in = config["filters"], config["kernel_size"], in_shape[3]
    depth = c_in * config["depth_multiplier"]
    bias = filters if config["use_bias"] else 0
    params = k_h * k_w * depth + depth * filters + bias
    params_text = (f"k × k × C_in + C_in × filters{' + filters' if bias else ''} = {k_h} × {k_w} × {depth} + "
                   f"{depth} × {filters}{f' + {filters}' if bias else ''} = {_number(params)}")
    return [None, height, width, filters], params, shape_text, params_text


def explain_pooling(layer, in_shape) -> tuple[list, int, str, str]:
    config = layer.get_config()
    (height, width), shape_text = spatial_formula(
        in_shape, config["pool_size"], config["strides"] or config["pool_size"], config["padding"])
    return [None, height, width, in_shape[3]], 0, shape_text, "no weights"


def explain_dense(layer, in_shape) -> tuple[list, int, str, str]:
    config = layer.get_config()
    units, inputs = config["units"], in_shape[-1]
    if config["use_bias"]:
        params, text = units * (inputs + 1), f"units × (inputs + 1) = {units} × ({_number(inputs)} + 1)"
    else:
        params, text = units * inputs, f"units × inputs, no bias = {units} × {_number(inputs)}"
    return [None, units], params, f"one value per unit: {units}", f"{text} = {_number(params)}"


def explain_flatten(layer, in_shape) -> tuple[list, int, str, str]:
    size = math.prod(in_shape[1:])
    sides = " × ".join(str(side) for side in in_shape[1:])
    return [None, size], 0, f"H × W × C = {sides} = {_number(size)}", "no weights"


def explain_global_pooling(layer, in_shape) -> tuple[list, int, str, str]:
    return [None, in_shape[-1]], 0, f"one mean per channel: C = {in_shape[-1]}", "no weights"


def explain_batch_norm(layer, in_shape) -> tuple[list, int, str, str]:
    channels = in_shape[-1]
    return (list(in_shape), 4 * channels, "unchanged",
            f"4 × C = 4 × {channels} = {4 * channels} (γ, β learn; moving mean and variance do not)")


def explain_unchanged(layer, in_shape) -> tuple[list, int, str, str]:
    return list(in_shape), 0, "unchanged", "no weights"


EXPLAINERS = {
    "Conv2D": explain_conv, "MaxPooling2D": explain_pooling, "AveragePooling2D": explain_pooling,
    "Dense": explain_dense, "Flatten": explain_flatten, "GlobalAveragePooling2D": explain_global_pooling,
    "BatchNormalization": explain_batch_norm, "Dropout": explain_unchanged, "Activation": explain_unchanged,
    "SeparableConv2D": explain_separable_conv, "Add": explain_unchanged,  # Add: a sum of equal shapes
}


def explain_layer(layer) -> dict:
    """The layer's shape and parameter formulas and whether they agree with Keras (None: a layer
    without a course formula, e.g. a pretrained base, shown as Keras reports it)."""
    keras_shape, keras_params = list(layer.output.shape), int(layer.count_params())
    explainer = EXPLAINERS.get(type(layer).__name__)
    row = {"name": layer.name, "type": type(layer).__name__, "output_shape": keras_shape, "params": keras_params}
    if explainer is None:
        return {**row, "shape_formula": "as built by Keras", "params_formula": "as built by Keras", "agrees": None}
    inputs = layer.input if not isinstance(layer.input, list) else layer.input[0]  # Add: the first input
    shape, params, shape_text, params_text = explainer(layer, tuple(inputs.shape))
    return {**row, "shape_formula": shape_text, "params_formula": params_text,
            "agrees": shape == keras_shape and params == keras_params}


# --- rendering ----------------------------------------------------------------------------------------
def _shape(shape: list) -> str:
    return "(" + ", ".join("None" if side is None else str(side) for side in shape) + ")"


def summary_tables(result: dict, explain: bool = False) -> list:
    """rich renderables: the layer table, the totals, and with `explain` one block per layer
    with its formulas and whether they agree with Keras."""
    from rich.table import Table
    from rich.text import Text

    title = (f"Model {result['name']!r} on {' × '.join(map(str, result['input_shape']))} images, "
             f"{result['num_classes']} classes")
    table = Table(title=title, title_justify="left")
    for column in ("Layer", "Type", "Output shape", "Param #"):
        table.add_column(column, justify="right" if column == "Param #" else "left")
    for row in result["layers"]:
        table.add_row(row["name"], row["type"], _shape(row["output_shape"]), _number(row["params"]))
    totals = Table.grid(padding=(0, 2))
    for label, key in (("Total params", "total_params"), ("Trainable params", "trainable_params"),
                       ("Non-trainable params", "non_trainable_params")):
        totals.add_row(f"{label}:", _number(result[key]))
    if not explain:
        return [table, totals]
    lines = Text()
    for row in result["explained"]:
        check = {True: "✓ agrees with Keras", False: "✗ differs from Keras", None: "(no formula)"}[row["agrees"]]
        lines.append(f"\n{row['name']} ({row['type']}) -> {_shape(row['output_shape'])}, "
                     f"{_number(row['params'])} params  {check}\n", style="bold")
        lines.append(f"  output: {row['shape_formula']}\n  params: {row['params_formula']}\n")
    return [table, totals, lines]
