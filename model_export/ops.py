"""Differentiable primitives whose gradients use TFLite builtin ops only.

TensorFlow's own gradients for these ops (``ReluGrad``, ``BiasAddGrad``,
``Conv2DBackpropFilter``, ``SparseSoftmaxCrossEntropyWithLogits``) are not TFLite
builtins, so a tape over ``tf.nn`` ops converts only with the Flex delegate, which
no board has. Each primitive here is a ``tf.custom_gradient`` whose backward pass is
written with ops that the converter maps to builtins. ``model_export.checks`` proves
them equal to TensorFlow autodiff on every export.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# Experiment knobs (scratch).
OPTS = {
    "conv": "gemm",
    "relu": "ceilmin",
    "dense": "bmm",
    "dk": "adjx",
    "im2col": "auto",
    "dw_below": 8,
    "dx": "phase",
}


def _bmm(a: tf.Tensor, b: tf.Tensor, adj_a: bool = False, adj_b: bool = False) -> tf.Tensor:
    """a @ b as TFLite BATCH_MATMUL (not FULLY_CONNECTED), which XNNPACK runs with dynamic operands."""
    return tf.raw_ops.BatchMatMulV3(x=a, y=b, adj_x=adj_a, adj_y=adj_b, Tout=a.dtype)


@tf.custom_gradient
def relu(x: tf.Tensor) -> tuple[tf.Tensor, object]:
    """ReLU with backward ``dy * (x > 0)``."""
    y = tf.maximum(x, 0.0)

    def grad(dy: tf.Tensor) -> tf.Tensor:
        if OPTS["relu"] == "ceilmin":
            # ceil(min(y, 1)) is exactly 1 where x > 0 and 0 elsewhere
            return dy * tf.math.ceil(tf.minimum(y, 1.0))
        return dy * tf.cast(x > 0, dy.dtype)

    return y, grad


@tf.custom_gradient
def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, object]:
    """``x @ kernel + bias``; x (N, I), kernel (I, O), bias (O,) -> (N, O)."""

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        if OPTS["dense"] == "bmm":
            dx = _bmm(dy, kernel, adj_b=True)  # (N, I)
            dk = _bmm(x, dy, adj_a=True)  # (I, O)
        else:
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

    x (N, H, W, Cin) with static H, W, Cin; kernel (KH, KW, Cin, Cout); bias (Cout,).
    """
    _, h, w, _ = x.shape
    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    if padding == "same":
        ph, pw = _same_padding(int(h), kh, stride), _same_padding(int(w), kw, stride)
    else:
        ph, pw = (0, 0), (0, 0)
    if OPTS["conv"] == "gemm":
        return _conv2d_gemm(x, kernel, bias, stride, ph, pw, padding == "same")
    if any(ph + pw):
        x = tf.pad(x, [[0, 0], list(ph), list(pw), [0, 0]])
    return _conv2d_valid(x, kernel, bias, stride)


# -- convolution as im2col + BATCH_MATMUL --------------------------------------------


def _pad(x: tf.Tensor, paddings: list[list[int]]) -> tf.Tensor:
    """Zero padding as PADV2: XNNPACK takes PAD (and runs it ~8x slower than the builtin)."""
    if not any(v for pair in paddings for v in pair):
        return x
    return tf.raw_ops.PadV2(input=x, paddings=paddings, constant_values=tf.constant(0.0, x.dtype))


def _onehot_filter(kh: int, kw: int, c: int) -> tf.Tensor:
    """Depthwise filter (KH, KW, C, KH*KW) copying tap (i, j) of channel c to channel c*KH*KW + i*KW + j."""
    eye = np.eye(kh * kw, dtype=np.float32).reshape(kh, kw, 1, kh * kw)
    return tf.constant(np.repeat(eye, c, axis=2))


def _patches(
    x: tf.Tensor,
    kh: int,
    kw: int,
    s: int,
    ph: tuple[int, int],
    pw: tuple[int, int],
    ho: int,
    wo: int,
    same: bool = False,
) -> tuple[tf.Tensor, str]:
    """im2col: (N*Ho*Wo, KH*KW*C) and its column order, "ijc" (HWIO) or "cij"."""
    h, w, c = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
    if OPTS["im2col"] == "dw" or (OPTS["im2col"] == "auto" and c * min(s, kw) < OPTS["dw_below"]):
        # A depthwise conv with a constant one-hot filter: XNNPACK runs it, any C.
        if same:  # the conv pads like TF's SAME: let the depthwise op pad
            p = tf.nn.depthwise_conv2d(x, _onehot_filter(kh, kw, c), [1, s, s, 1], "SAME")
        else:
            x = _pad(x, [[0, 0], list(ph), list(pw), [0, 0]])
            p = tf.nn.depthwise_conv2d(x, _onehot_filter(kh, kw, c), [1, s, s, 1], "VALID")
        return tf.reshape(p, [-1, kh * kw * c]), "cij"
    if s == 1:
        x = _pad(x, [[0, 0], list(ph), list(pw), [0, 0]])
        cols = [x[:, i : i + ho, j : j + wo, :] for i in range(kh) for j in range(kw)]
        return _concat2d(cols), "ijc"
    # Strided: space_to_depth turns tap (s*a+p, s*b+q) into a unit-stride window at (a, b)
    # over channel block (p, q), so every piece is a plain slice.
    ah, aw = -(-kh // s), -(-kw // s)
    hq = s * max(-(-(h + ph[0]) // s), ah - 1 + ho)
    wq = s * max(-(-(w + pw[0]) // s), aw - 1 + wo)
    x = _pad(x, [[0, 0], [ph[0], hq - h - ph[0]], [pw[0], wq - w - pw[0]], [0, 0]])
    x2 = tf.nn.space_to_depth(x, s)  # (N, hq/s, wq/s, s*s*C), channels (p, q, c)
    cols = []
    for i in range(kh):
        a, p = divmod(i, s)
        for b in range(aw):
            qn = min(s, kw - s * b)  # taps j = s*b .. s*b+qn-1 are adjacent channel blocks
            lo = (p * s) * c
            cols.append(x2[:, a : a + ho, b : b + wo, lo : lo + qn * c])
    return _concat2d(cols), "ijc"


def _concat2d(cols: list[tf.Tensor]) -> tf.Tensor:
    """Concatenate 4-D pieces along channels as one 2-D matrix (rows N*H*W).

    Reshaping each piece (not the result) keeps the converter from folding the reshape
    into the following BATCH_MATMUL as a broadcast 4-D matmul, which is much slower.
    """
    flat = [tf.reshape(c, [-1, int(c.shape[3])]) for c in cols]
    return flat[0] if len(flat) == 1 else tf.concat(flat, axis=1)


def _conv2d_gemm(
    x: tf.Tensor,
    kernel: tf.Tensor,
    bias: tf.Tensor,
    s: int,
    ph: tuple[int, int],
    pw: tuple[int, int],
    same: bool = False,
) -> tf.Tensor:
    _, h, w, cin = (int(d) if d is not None else None for d in x.shape)
    kh, kw, _, cout = (int(d) for d in kernel.shape)
    ho = (h + sum(ph) - kh) // s + 1
    wo = (w + sum(pw) - kw) // s + 1

    @tf.custom_gradient
    def conv(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, object]:
        p, order = _patches(x, kh, kw, s, ph, pw, ho, wo, same)
        kmat = kernel if order == "ijc" else tf.transpose(kernel, [2, 0, 1, 3])
        kmat = tf.reshape(kmat, [kh * kw * cin, cout])
        y = tf.reshape(_bmm(p, kmat) + bias, [-1, ho, wo, cout])

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            dy2 = tf.reshape(dy, [-1, cout])  # (M, Cout)
            if OPTS["dk"] == "adjx":
                dk = _bmm(p, dy2, adj_a=True)  # (K, Cout)
            else:
                dk = tf.transpose(_bmm(dy2, p, adj_a=True))
            if order == "ijc":
                dk = tf.reshape(dk, [kh, kw, cin, cout])
            else:
                dk = tf.transpose(tf.reshape(dk, [cin, kh, kw, cout]), [1, 2, 0, 3])
            db = tf.reduce_sum(dy2, axis=0)
            dx = _input_gradient(dy, kernel, s, ph, pw, h, w)
            return dx, dk, db

        return y, grad

    return conv(x, kernel, bias)


def _input_gradient(
    dy: tf.Tensor,
    kernel: tf.Tensor,
    s: int,
    ph: tuple[int, int],
    pw: tuple[int, int],
    h: int,
    w: int,
) -> tf.Tensor:
    """dL/dx of a strided VALID conv of the padded input, as one im2col + matmul.

    Phase decomposition: padded input row s*u + p gets dy[u - a] * K[s*a + p] for
    a = 0..ceil(KH/s)-1, i.e. a stride-1 "full" correlation of dy with the kernel
    re-blocked to (A, A, Cout) -> (p, q, Cin); depth_to_space interleaves the phases.
    """
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    ho, wo = int(dy.shape[1]), int(dy.shape[2])
    ah, aw = -(-kh // s), -(-kw // s)
    # rows of the padded input to produce: the unpadded ones [ph0, ph0 + h)
    u0, u1 = ph[0] // s, (ph[0] + h - 1) // s
    v0, v1 = pw[0] // s, (pw[0] + w - 1) // s
    nu, nv = u1 - u0 + 1, v1 - v0 + 1
    # dy rows u - (ah-1) .. u for u in [u0, u1]: pad so every index exists
    top, left = max(0, ah - 1 - u0), max(0, aw - 1 - v0)
    bottom, right = max(0, u1 + 1 - ho), max(0, v1 + 1 - wo)
    dyp = _pad(dy, [[0, 0], [top, bottom], [left, right], [0, 0]])
    r0, c0 = u0 - (ah - 1) + top, v0 - (aw - 1) + left
    # tap (a, b) reads dy[u - a, v - b]
    cols = [
        dyp[:, r0 + ah - 1 - a : r0 + ah - 1 - a + nu, c0 + aw - 1 - b : c0 + aw - 1 - b + nv, :]
        for a in range(ah)
        for b in range(aw)
    ]
    pat = _concat2d(cols)  # (N*nu*nv, A*A*Cout)
    # weights (a, b, o) x (p, q, c): K[s*a + p, s*b + q, c, o]
    kp = kernel
    if s * ah != kh or s * aw != kw:
        kp = _pad(kernel, [[0, s * ah - kh], [0, s * aw - kw], [0, 0], [0, 0]])
    kp = tf.reshape(kp, [ah, s, aw, s, cin, cout])
    kp = tf.transpose(kp, [0, 2, 5, 1, 3, 4])  # (A, A, Cout, s, s, Cin)
    kp = tf.reshape(kp, [ah * aw * cout, s * s * cin])
    dx = tf.reshape(_bmm(pat, kp), [-1, nu, nv, s * s * cin])
    if s > 1:
        dx = tf.nn.depth_to_space(dx, s)  # (N, s*nu, s*nv, Cin)
    oh, ow = ph[0] - s * u0, pw[0] - s * v0
    if oh or ow or s * nu != h or s * nv != w:
        dx = dx[:, oh : oh + h, ow : ow + w, :]
    return dx


# -- previous formulation -------------------------------------------------------------


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
