"""Differentiable primitives whose gradients use TFLite builtin ops only.

TensorFlow's own gradients for these ops (``ReluGrad``, ``BiasAddGrad``,
``Conv2DBackpropFilter``, ``SparseSoftmaxCrossEntropyWithLogits``) are not TFLite
builtins, so a tape over ``tf.nn`` ops converts only with the Flex delegate, which
no board has. Each primitive here is a ``tf.custom_gradient`` whose backward pass is
written with ops that the converter maps to builtins. ``model_export.checks`` proves
them equal to TensorFlow autodiff on every export.

Speed: in a training graph every weight is a resource variable, i.e. a *dynamic*
tensor, and the XNNPACK delegate (on by default in ai-edge-litert and tf.lite) takes
``CONV_2D``, ``TRANSPOSE_CONV`` and ``FULLY_CONNECTED`` only with constant weights. Left
to the interpreter's own kernels those run ~2x slower in ai-edge-litert than in tf.lite;
ai-edge-litert's own ``BATCH_MATMUL`` is ~40x slower than XNNPACK's and its
``SLICE``/``STRIDED_SLICE`` 17-40x slower than tf.lite's. XNNPACK does take a 2-D
``BATCH_MATMUL`` with two dynamic operands (either adjoint flag) and runs it near the
CPU's peak. So every
matrix product here is a 2-D ``BATCH_MATMUL`` and every convolution an explicit im2col
(one ``GATHER``, or a depthwise conv with a constant one-hot filter) followed by one
(see ``conv2d``). cnn trains ~2.8x faster in ai-edge-litert than with ``CONV_2D`` +
``TRANSPOSE_CONV`` + dilated ``CONV_2D`` (bench/train_throughput.py).
"""

from __future__ import annotations

import numpy as np

from model_export._tf import tf


def _matmul(a: tf.Tensor, b: tf.Tensor, adj_a: bool = False, adj_b: bool = False) -> tf.Tensor:
    """``a @ b`` (optionally transposed operands) that converts to ``BATCH_MATMUL``.

    ``tf.matmul(..., transpose_b=True)`` becomes ``FULLY_CONNECTED``, which XNNPACK
    does not take with a dynamic weight (~4x slower in ai-edge-litert); BatchMatMulV3
    stays a ``BATCH_MATMUL`` with adjoint flags.
    """
    return tf.raw_ops.BatchMatMulV3(x=a, y=b, adj_x=adj_a, adj_y=adj_b, Tout=a.dtype)


@tf.custom_gradient
def relu(x: tf.Tensor) -> tuple[tf.Tensor, object]:
    """ReLU with backward ``dy * (x > 0)``."""
    y = tf.maximum(x, 0.0)

    def grad(dy: tf.Tensor) -> tf.Tensor:
        # ceil(min(y, 1)) is exactly 1 where x > 0 and 0 elsewhere. MINIMUM/CEIL/MUL all
        # run in XNNPACK; GREATER + CAST does not (and CAST is slow in tf.lite and
        # tflite-runtime: ~12x this).
        return dy * tf.math.ceil(tf.minimum(y, 1.0))

    return y, grad


@tf.custom_gradient
def dense(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, object]:
    """``x @ kernel + bias``; x (N, I), kernel (I, O), bias (O,) -> (N, O)."""

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        dx = _matmul(dy, kernel, adj_b=True)  # (N, I)
        dk = _matmul(x, dy, adj_a=True)  # (I, O)
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

    x (N, H, W, Cin) with static H, W, Cin (N may be dynamic); kernel (KH, KW, Cin, Cout);
    bias (Cout,); padding "same" or "valid" as in Keras.

    im2col + matmul: the patch matrix P (N*Ho*Wo, KH*KW*Cin) is built once and serves
    the forward pass ``P @ K`` and the filter gradient ``P^T @ dy``; the input gradient
    is a second im2col (of dy) and matmul, see ``_input_gradient``.
    """
    _, h, w, cin = x.shape
    kh, kw, _, cout = (int(d) for d in kernel.shape)
    h, w, cin = int(h), int(w), int(cin)
    if padding == "same":
        ph, pw = _same_padding(h, kh, stride), _same_padding(w, kw, stride)
    else:
        ph, pw = (0, 0), (0, 0)
    ho = (h + sum(ph) - kh) // stride + 1
    wo = (w + sum(pw) - kw) // stride + 1
    s = stride

    @tf.custom_gradient
    def conv(x: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor) -> tuple[tf.Tensor, object]:
        p, order = _patches(x, kh, kw, s, ph, pw, ho, wo, padding == "same")  # (M, KH*KW*Cin)
        kmat = kernel if order == "ijc" else tf.transpose(kernel, [2, 0, 1, 3])
        kmat = tf.reshape(kmat, [kh * kw * cin, cout])
        y = tf.reshape(_matmul(p, kmat) + bias, [-1, ho, wo, cout])

        def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            dy2 = tf.reshape(dy, [-1, cout])  # (M, Cout)
            dk = _matmul(p, dy2, adj_a=True)  # (KH*KW*Cin, Cout), rows in `order`
            if order == "ijc":
                dk = tf.reshape(dk, [kh, kw, cin, cout])
            else:
                dk = tf.transpose(tf.reshape(dk, [cin, kh, kw, cout]), [1, 2, 0, 3])
            db = tf.reduce_sum(dy2, axis=0)  # (Cout,)
            dx = _input_gradient(dy, kernel, s, ph, pw, h, w)  # pruned when x needs none
            return dx, dk, db

        return y, grad

    return conv(x, kernel, bias)


# -- building blocks ------------------------------------------------------------------

# Below this many input channels, im2col is a one-hot depthwise conv rather than a
# gather: gathering pixels of a few floats each is slow (cnn's first layer, C=1: 98 us
# vs 378 us; cifar_cnn's, C=3: 437 us vs 738 us), while the depthwise op costs KH*KW
# multiply-adds per copied float (cnn's second layer, C=16: 355 us vs 145 us).
_DEPTHWISE_IM2COL_BELOW = 8


def _pad(x: tf.Tensor, paddings: list[list[int]]) -> tf.Tensor:
    """Zero padding as ``PADV2``: XNNPACK takes ``PAD`` and runs it ~8x slower than the
    builtin kernel does (80 us vs 9 us for cnn's second-layer input)."""
    if not any(v for pair in paddings for v in pair):
        return x
    return tf.raw_ops.PadV2(input=x, paddings=paddings, constant_values=tf.constant(0.0, x.dtype))


def _onehot_filter(kh: int, kw: int, c: int) -> tf.Tensor:
    """Depthwise filter (KH, KW, C, KH*KW) copying tap (i, j) of channel c to output
    channel c*KH*KW + i*KW + j."""
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
    same: bool,
) -> tuple[tf.Tensor, str]:
    """im2col: (N*Ho*Wo, KH*KW*C) and its column order, "ijc" (as HWIO) or "cij"."""
    c = int(x.shape[3])
    if c < _DEPTHWISE_IM2COL_BELOW:
        # A depthwise conv with a constant one-hot filter: XNNPACK runs it.
        if same:  # padded like TF's SAME: the op pads by itself
            p = tf.nn.depthwise_conv2d(x, _onehot_filter(kh, kw, c), [1, s, s, 1], "SAME")
        else:
            x = _pad(x, [[0, 0], list(ph), list(pw), [0, 0]])
            p = tf.nn.depthwise_conv2d(x, _onehot_filter(kh, kw, c), [1, s, s, 1], "VALID")
        return tf.reshape(p, [-1, kh * kw * c]), "cij"
    rows = np.arange(ho)[:, None] * s + np.arange(kh)[None, :] - ph[0]  # (Ho, KH) input rows
    cols = np.arange(wo)[:, None] * s + np.arange(kw)[None, :] - pw[0]  # (Wo, KW) input cols
    return _gather_patches(x, rows, cols), "ijc"


def _gather_patches(x: tf.Tensor, rows: np.ndarray, cols: np.ndarray) -> tf.Tensor:
    """Patch matrix (N*U*V, A*B*C) whose row (n, u, v) holds x[n, rows[u, a], cols[v, b], :]
    for every tap (a, b), zeros where the row or column is out of range.

    One GATHER along the pixel axis of each image (plus a zero pixel for the padding):
    a single copy, where slices + concatenation copy twice (and the space_to_depth a
    strided conv needs, a third time): 2x faster for cnn's and cifar_cnn's layers, in
    every runtime.
    """
    _, h, w, c = (int(d) if d is not None else -1 for d in x.shape)
    ok = (rows >= 0)[:, None, :, None] & (rows < h)[:, None, :, None]
    ok = ok & (cols >= 0)[None, :, None, :] & (cols < w)[None, :, None, :]  # (U, V, A, B)
    index = rows[:, None, :, None] * w + cols[None, :, None, :]
    flat = tf.reshape(x, [-1, h * w, c])
    if not ok.all():
        index = np.where(ok, index, h * w)  # the zero pixel appended below
        flat = _pad(flat, [[0, 0], [0, 1], [0, 0]])
    p = tf.gather(flat, tf.constant(index.reshape(-1).astype(np.int32)), axis=1)
    return tf.reshape(p, [-1, rows.shape[1] * cols.shape[1] * c])


def _input_gradient(
    dy: tf.Tensor,
    kernel: tf.Tensor,
    s: int,
    ph: tuple[int, int],
    pw: tuple[int, int],
    h: int,
    w: int,
) -> tf.Tensor:
    """dL/dx of the convolution (N, H, W, Cin) as one im2col of dy and one matmul.

    Phase decomposition of the transposed convolution: padded-input row s*u + p
    receives dy[u - a] @ K[s*a + p]^T for a = 0..ceil(KH/s)-1, i.e. a stride-1 "full"
    correlation of dy over an A x A window (A = ceil(K/s)) whose (a, b, Cout) rows map
    to (p, q, Cin) columns; depth_to_space interleaves the s*s phases. Taps past the
    kernel are zero rows (5x5 stride 2: 36 slots for 25 taps); for stride 1 this is the
    usual correlation with the flipped kernel.
    """
    kh, kw, cin, cout = (int(d) for d in kernel.shape)
    ah, aw = -(-kh // s), -(-kw // s)
    # phases u covering the unpadded input rows [ph0, ph0 + h) of the padded input
    u0, u1 = ph[0] // s, (ph[0] + h - 1) // s
    v0, v1 = pw[0] // s, (pw[0] + w - 1) // s
    nu, nv = u1 - u0 + 1, v1 - v0 + 1
    # dy[u - a, v - b] for u in [u0, u1], v in [v0, v1] and every (a, b); zero outside dy
    rows = np.arange(u0, u1 + 1)[:, None] - np.arange(ah)[None, :]
    cols = np.arange(v0, v1 + 1)[:, None] - np.arange(aw)[None, :]
    pat = _gather_patches(dy, rows, cols)  # (N*nu*nv, A*A*Cout), columns (a, b, o)
    # weights (a, b, o) x (p, q, c) = K[s*a + p, s*b + q, c, o]
    kp = _pad(kernel, [[0, s * ah - kh], [0, s * aw - kw], [0, 0], [0, 0]])
    kp = tf.reshape(kp, [ah, s, aw, s, cin, cout])
    kp = tf.transpose(kp, [0, 2, 5, 1, 3, 4])  # (A, A, Cout, s, s, Cin)
    kp = tf.reshape(kp, [ah * aw * cout, s * s * cin])
    dx = tf.reshape(_matmul(pat, kp), [-1, nu, nv, s * s * cin])
    if s > 1:
        dx = tf.nn.depth_to_space(dx, s)  # (N, s*nu, s*nv, Cin)
    oh, ow = ph[0] - s * u0, pw[0] - s * v0
    if oh or ow or s * nu != h or s * nv != w:
        dx = dx[:, oh : oh + h, ow : ow + w, :]
    return dx


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
