"""Calling the engine's backward kernels as the tests compare them: the parameter gradients they write into
``grads`` returned alongside the input gradient."""

import numpy as np


def backward_grads(kernel, dy, saved, w_shape, b_shape, *, need_input=None, **kwargs):
    """``(dx, dW, db)`` of a backward kernel (``conv2d_backward`` or ``conv_transpose2d_backward``):
    ``w_shape`` / ``b_shape`` the shapes of the gradients wanted (``None``: not wanted, returned as
    ``None``); ``need_input`` passed when given (the transposed kernel always returns ``dx``)."""
    grads = {key: np.full(shape, np.nan, dtype=dy.dtype)  # NaN: a gradient not written shows
             for key, shape in (("W", w_shape), ("b", b_shape)) if shape is not None}
    if need_input is not None:
        kwargs["need_input"] = need_input
    dx = kernel(dy, saved, grads=grads, **kwargs)
    return dx, grads.get("W"), grads.get("b")
