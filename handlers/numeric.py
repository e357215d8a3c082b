"""numpy handlers: matrix multiply, FFT magnitude (df:reduce is a standard element now:
pfnode/elements/data.py).

Inputs are JSON lists (nested for matrices) or, for packets that opt in to numpy payloads
(metadata `"ndarray": true`, docs/PROTOCOL.md), numpy arrays; a float64 array is used as it
is, without a copy. Outputs are numpy values, which the worker serialises to JSON directly
(no .tolist() detour needed), or sends back as `$ndarray` objects under the opt-in.
"""
from __future__ import annotations

import numpy as np

from pfnode import handler

def _as_array(values, name: str, ndim: int | None = None) -> np.ndarray:
    given_array = isinstance(values, np.ndarray)
    if given_array and values.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be real numbers, got an array of dtype {values.dtype}")
    try:  # a native float64 ndarray (a numpy payload) comes back as it is, not copied
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numbers: {exc}") from None
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {list(array.shape)}")
    # JSON has no NaN: a NaN in a list was a null. In an ndarray payload NaN is a value.
    if not given_array and np.isnan(array).any():
        raise ValueError(f"{name} must be numbers, not null")
    return array


@handler("df", "matmul")
def matmul(data):
    """{"a": [[...]], "b": [[...]]} (lists or 2-d ndarrays) -> a @ b (an ndarray)."""
    if not isinstance(data, dict):
        raise TypeError('df:matmul expects {"a": [[...]], "b": [[...]]}')
    a = _as_array(data.get("a"), "a", ndim=2)
    b = _as_array(data.get("b"), "b", ndim=2)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"shapes {list(a.shape)} and {list(b.shape)} cannot be multiplied")
    return a @ b


@handler("df", "fft")
def fft_magnitude(data):
    """[samples] or {"signal": [samples]} (lists or a 1-d ndarray) -> |rfft(samples)|."""
    signal = data.get("signal") if isinstance(data, dict) else data
    samples = _as_array(signal, "signal", ndim=1)
    if samples.size == 0:
        raise ValueError("signal must not be empty")
    return np.abs(np.fft.rfft(samples))
