"""Differentiable primitives whose gradients use TFLite builtin ops only.

TensorFlow's own gradients for these ops (``ReluGrad``, ``BiasAddGrad``,
``Conv2DBackpropFilter``, ``SparseSoftmaxCrossEntropyWithLogits``) are not TFLite
builtins, so a tape over ``tf.nn`` ops converts only with the Flex delegate, which
no board has. Each primitive here is a ``tf.custom_gradient`` whose backward pass is
written with ops that the converter maps to builtins (``FULLY_CONNECTED``,
``BATCH_MATMUL``, ``TRANSPOSE_CONV``, ``CONV_2D`` with dilation, ``TRANSPOSE``,
``SUM``, ``ONE_HOT``, ``SOFTMAX``...). ``model_export.checks`` proves them equal to
TensorFlow autodiff on every export.
"""

from __future__ import annotations

import tensorflow as tf


@tf.custom_gradient
def relu(x: tf.Tensor) -> tuple[tf.Tensor, object]:
    """ReLU with backward ``dy * (x > 0)``."""

    def grad(dy: tf.Tensor) -> tf.Tensor:
        return dy * tf.cast(x > 0, dy.dtype)

    return tf.maximum(x, 0.0), grad


@tf.custom_gradient
def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, object]:
    """``x @ kernel + bias``; x (N, I), kernel (I, O), bias (O,) -> (N, O)."""

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        dx = tf.matmul(dy, kernel, transpose_b=True)  # (N, I)
        dk = tf.matmul(x, dy, transpose_a=True)  # (I, O)
        db = tf.reduce_sum(dy, axis=0)  # (O,)
        return dx, dk, db

    return tf.matmul(x, kernel) + bias, grad


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME padding (before, after) for one spatial dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d(
    x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, stride: int, padding: str
) -> tf.Tensor:
    """2-D convolution plus bias with a builtin-only backward pass.

    x (N, H, W, Cin) with static N, H, W, Cin; kernel (KH, KW, Cin, Cout); bias (Cout,).
    Padding is applied explicitly so the convolution itself is always VALID, which keeps
    the filter-gradient trick below exact for every stride.
    """
    _, h, w, _ = x.shape
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if padding == "same":
        ph, pw = _same_padding(int(h), kh, stride), _same_padding(int(w), kw, stride)
        if any(ph + pw):
            x = tf.pad(x, [[0, 0], list(ph), list(pw), [0, 0]])
    return _conv2d_valid(x, kernel, bias, stride)


def _conv2d_valid(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, stride: int) -> tf.Tensor:
    @tf.custom_gradient
    def conv(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, object]:
        y = tf.nn.conv2d(x, kernel, strides=stride, padding="VALID") + bias  # (N, Ho, Wo, Cout)

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            dx = tf.nn.conv2d_transpose(
                dy, kernel, output_shape=tf.shape(x), strides=stride, padding="VALID"
            )  # (N, H, W, Cin)
            dk = _filter_gradient(x, dy, kernel.shape, stride)
            db = tf.reduce_sum(dy, axis=[0, 1, 2])  # (Cout,)
            return dx, dk, db

        return y, grad

    return conv(x, kernel, bias)


def _filter_gradient(x: tf.Tensor, dy: tf.Tensor, kshape: tf.TensorShape, stride: int) -> tf.Tensor:
    """dL/dkernel as a plain convolution (the batch becomes the channel dimension).

    dK[i, j, c, o] = sum_{n,h,w} x[n, h*s + i, w*s + j, c] * dy[n, h, w, o], which is a
    VALID convolution of x^T (Cin, H, W, N) with dy^T (Ho, Wo, N, Cout) as filter and
    dilation s. It needs the batch size N to be static.
    """
    kh, kw = int(kshape[0]), int(kshape[1])
    xt = tf.transpose(x, [3, 1, 2, 0])  # (Cin, H, W, N)
    dyt = tf.transpose(dy, [1, 2, 0, 3])  # (Ho, Wo, N, Cout)
    g = tf.nn.conv2d(
        xt, dyt, strides=1, padding="VALID", dilations=stride
    )  # (Cin, >=KH, >=KW, Cout)
    g = g[:, :kh, :kw, :]  # (Cin, KH, KW, Cout)
    return tf.transpose(g, [1, 2, 0, 3])  # (KH, KW, Cin, Cout)


@tf.custom_gradient
def softmax_cross_entropy(logits: tf.Tensor, onehot: tf.Tensor) -> tuple[tf.Tensor, object]:
    """Mean cross-entropy of integer labels given as one-hot rows; logits (N, K)."""
    m = tf.reduce_max(logits, axis=1, keepdims=True)  # (N, 1)
    shifted = logits - tf.stop_gradient(m)
    lse = tf.math.log(tf.reduce_sum(tf.exp(shifted), axis=1))  # (N,)
    picked = tf.reduce_sum(shifted * onehot, axis=1)  # (N,)
    n = tf.cast(tf.shape(logits)[0], logits.dtype)
    loss = tf.reduce_sum(lse - picked) / n

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return dy * (tf.nn.softmax(logits) - onehot) / n, tf.zeros_like(onehot)

    return loss, grad
