"""Pillow's bilinear resize inside a model, to the pixel.

A stock image classifier (MediaPipe Tasks, an Android app) resizes every image to the model's
input itself, without Pillow's antialiasing, and at 128 px that moves the int8 model's call on a
few films in a hundred (`experiments/clients`). The RGB variant therefore takes the data set's
224 px films (`pneumocnn.core.metadata.FILM_SIZE`) and does the last step of
`pneumocnn.data.images.to_model_input` inside, in float32: `resize_model` here, grafted in front
of it (`pneumocnn.edge.graft.prepend`).

Pillow resizes an 8-bit image in two passes (columns, then rows), each a sum of pixels times
fixed-point coefficients (22 fractional bits) rounded and clipped to 0-255 (`Resample.c`:
`precompute_coeffs`, `normalize_coeffs_8bpc`, `ImagingResampleHorizontal_8bpc`). Its
coefficients are written out here by hand, because neither Pillow nor any library exposes them
(`web/preprocess.js` ports the same code to the browser). The sums are computed exactly in
float32 by splitting each coefficient into its high and low 11 bits: every partial sum is an
integer below 2^24, exact in float32 whatever order the runtime adds in.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from pneumocnn.edge.convert import BATCH_SIZE

# Pillow's fixed-point precision for 8-bit images (`PRECISION_BITS = 32 - 8 - 2`).
PRECISION_BITS = 22
_SPLIT = 2**11  # high and low halves of a 22-bit coefficient
# The resize layer's name: it stays float32 in every file.
RESIZE_LAYER = "pillow_resize"


def bilinear_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's fixed-point BILINEAR coefficients for one axis, as a matrix.

    Args:
        in_size: the input's length along the axis.
        out_size: the output's.

    Returns:
        int64 array `(out_size, in_size)`: output pixel `i` is
        `clip((2^21 + sum_j matrix[i, j] * pixel[j]) >> 22, 0, 255)`.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the bilinear (triangle) filter's support is 1
    matrix = np.zeros((out_size, in_size), np.int64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        weights = [
            max(0.0, 1.0 - abs((x + xmin - center + 0.5) / filterscale)) for x in range(xmax)
        ]
        total = sum(weights)  # in order, in double, as Pillow adds them
        for x, weight in enumerate(weights):
            if total != 0.0:
                weight /= total
            matrix[out, xmin + x] = int(0.5 + weight * (1 << PRECISION_BITS))
    return matrix


def taps(coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A coefficient matrix (`bilinear_coefficients`) as the few input pixels each output pixel
    reads: `(indices, weights)`, both `(out_size, k)` with `k` the most any row reads (a row
    with fewer repeats its last index with weight 0). Stored so, the RGB variant carries a few
    hundred numbers per axis instead of a dense matrix."""
    count = int((coefficients != 0).sum(axis=1).max())
    indices = np.zeros((len(coefficients), count), np.int32)
    weights = np.zeros((len(coefficients), count), np.int64)
    for row, values in enumerate(coefficients):
        (where,) = np.nonzero(values)
        indices[row, : len(where)], weights[row, : len(where)] = where, values[where]
        indices[row, len(where) :] = where[-1] if len(where) else 0
    return indices, weights


def _pass(pixels, coefficients: np.ndarray, axis: int):
    """One of Pillow's passes along `axis` (1: rows of the image, 2: columns), exactly: the
    pixels each output reads are gathered and weighted by both halves of their coefficients,
    summed separately, then recombined with floor divisions
    (`floor((A 2^11 + B) / 2^22) = floor((A + floor(B / 2^11)) / 2^11)`)."""
    indices, weights = taps(coefficients)
    gathered = ops.take(pixels, indices, axis=axis)  # the axis becomes (out_size, k)
    shape = [1, 1, 1, 1, 1]
    shape[axis : axis + 2] = weights.shape
    high = (weights // _SPLIT).astype(np.float32).reshape(shape)
    low = (weights % _SPLIT).astype(np.float32).reshape(shape)
    sum_high = ops.sum(gathered * high, axis=axis + 1)
    sum_low = ops.sum(gathered * low, axis=axis + 1) + float(1 << (PRECISION_BITS - 1))
    value = ops.floor((sum_high + ops.floor(sum_low / _SPLIT)) / _SPLIT)
    return ops.clip(value, 0.0, 255.0)


def pillow_resize_op(images, out_size: int):
    """`Image.resize((out_size, out_size), BILINEAR)` of each channel of raw 0-255 images
    `(n, H, W, C)`, in Keras ops; the output has Pillow's pixels exactly."""
    height, width = int(images.shape[1]), int(images.shape[2])
    columns = _pass(images, bilinear_coefficients(width, out_size), axis=2)  # Pillow's first
    return _pass(columns, bilinear_coefficients(height, out_size), axis=1)


def resize_model(in_size: int, out_size: int, channels: int = 3) -> keras.Model:
    """Raw 0-255 images `(1, in_size, in_size, channels)` in, Pillow's resize to `out_size` out
    (see `pillow_resize_op`)."""
    image = keras.Input((in_size, in_size, channels), batch_size=BATCH_SIZE, name="image")
    resized = keras.layers.Lambda(
        lambda x: pillow_resize_op(x, out_size),
        name=RESIZE_LAYER,
        output_shape=(out_size, out_size, channels),
    )(image)
    return keras.Model(image, resized, name="pneumocnn_resize")
