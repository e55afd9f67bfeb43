"""Keras 2 export variants tf2onnx meets in practice (docs/robustness.md's Keras table), random
init (``keras.utils.set_random_seed(0)``), opset 17, dynamic batch, written to ``NAME.onnx`` in
the current folder for ``benchmarks/real_exports.py --onnx``. Run in the Keras 2 venv
(``tensorflow-cpu==2.15.1 tf2onnx==1.17.0``):

    python benchmarks/keras_variants.py channels_first custom_layers tf_module

- ``channels_first``: a CNN built with ``data_format="channels_first"`` (Conv2D, BatchNorm on
  axis 1, ReLU, MaxPooling2D, a residual Add, GlobalAveragePooling2D, Dense) on 3x32x32.
- ``custom_layers``: ``keras.layers.Layer`` subclasses of raw TensorFlow ops on a 32x32 CNN: an
  RMS norm over channels (``x * rsqrt(mean(x^2) + eps) * gamma``), a learnt per-channel scale
  before ``tf.nn.gelu`` (tanh approximation), a squeeze-excite gate (``reduce_mean`` and
  ``sigmoid``), exported through ``tf.function`` and ``tf2onnx.convert.from_function``.
- ``tf_module``: no Keras: a ``tf.Module`` MLP of ``tf.Variable`` weights (4 residual blocks of
  LayerNorm via ``tf.nn.moments``, ``tf.matmul``, ``tf.nn.silu``) over 64 features, through
  ``tf.function``.
- 1-D convolutions on 64 steps of 16 features (tf2onnx writes each as a 2-D Conv on
  ``[N, C, 1, T]`` between an Unsqueeze and a Squeeze), through ``tf.function`` (Keras 3 too):
  ``conv1d`` (Conv1D, SeparableConv1D, MaxPooling1D, a dilated Conv1D, GlobalAveragePooling1D),
  ``conv1d_bn`` (SeparableConv1D + BatchNormalization + ReLU x3, a strided Conv1D,
  GlobalMaxPooling1D), ``conv1d_ln`` (a causal Conv1D, 2 residual blocks of LayerNormalization,
  SeparableConv1D with swish and a 1x1 Conv1D), ``conv1d_lstm`` (SeparableConv1D,
  AveragePooling1D, a Bidirectional LSTM and a GRU).
- The Keras sweep's layer models (docs/robustness.md, "Keras sweep, stop 40"; Keras 3 through
  ``tf.function``; ``python benchmarks/keras_variants.py sweep`` writes them all; its
  MultiHeadAttention models are ``benchmarks/keras_transformers.py --sweep``): ``groupnorm``
  (GroupNormalization + swish), ``unitnorm`` (UnitNormalization of Dense rows and of a conv
  map's channels), ``attention_layers`` (``Attention``, ``AdditiveAttention``, self-similarity
  ``Attention()([x, x, x])``), ``separable`` (DepthwiseConv2D + BatchNorm + ReLU6 stacks,
  SeparableConv2D), ``resample`` (ZeroPadding2D, UpSampling2D, Cropping2D), ``unet`` (a
  concatenating U-Net with UpSampling2D), ``global_max`` (GlobalMaxPooling2D beside
  GlobalAveragePooling2D), ``text_gap`` (Embedding + GlobalAveragePooling1D), ``activations``
  (Dense with tanh GELU, swish, selu, elu, softplus, mish), ``dropout_train`` (Dropout and
  SpatialDropout2D with ``training=True``: tf2onnx leaves ``StatelessRandomUniformV2``, refused
  in one line), ``dropout_random`` (the same drops written with ``tf.random.uniform``),
  ``lambda_ops`` (Lambda layers: ``reduce_max``, ``reduce_std``, ``reduce_logsumexp``,
  ``l2_normalize``, ``reduce_prod``).
- The Keras sweep of stop 42 (``python benchmarks/keras_variants.py sweep42``): the models of
  ``benchmarks/keras_sweep42.py`` (Conv3D, Conv2DTranspose, DepthwiseConv1D, ConvLSTM,
  LayerNormalization over several axes, RMSNormalization, BatchNormalization in training mode,
  merges, activation layers, seq2seq, a Siamese pair).
"""

import sys

import numpy as np
import tensorflow as tf
import tf2onnx
from tensorflow import keras

from keras_sweep42 import SWEEP42

L = keras.layers


def channels_first():
    x = keras.Input((3, 32, 32), name="x")
    h = L.Conv2D(16, 3, padding="same", data_format="channels_first", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization(axis=1)(h))
    h = L.MaxPooling2D(2, data_format="channels_first")(h)
    y = L.Conv2D(16, 3, padding="same", data_format="channels_first", use_bias=False)(h)
    y = L.BatchNormalization(axis=1)(y)
    h = L.ReLU()(L.Add()([h, y]))
    h = L.GlobalAveragePooling2D(data_format="channels_first")(h)
    return keras.Model(x, L.Dense(10)(h)), (3, 32, 32)


class RMSNorm(L.Layer):
    def build(self, shape):
        self.gamma = self.add_weight(name="gamma", shape=(shape[-1],), initializer="ones")

    def call(self, x):
        return x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), -1, keepdims=True) + 1e-6) * self.gamma


class ScaledGelu(L.Layer):
    def build(self, shape):
        self.scale = self.add_weight(name="scale", shape=(shape[-1],),
                                     initializer=keras.initializers.Constant(1.5))

    def call(self, x):
        return tf.nn.gelu(x * self.scale, approximate=True)


class SqueezeExcite(L.Layer):
    def build(self, shape):
        c = shape[-1]
        self.w1 = self.add_weight(name="w1", shape=(c, c // 4), initializer="glorot_uniform")
        self.w2 = self.add_weight(name="w2", shape=(c // 4, c), initializer="glorot_uniform")

    def call(self, x):
        s = tf.reduce_mean(x, axis=[1, 2])
        s = tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(s, self.w1)), self.w2))
        return x * s[:, None, None, :]


def custom_layers():
    x = keras.Input((32, 32, 3), name="x")
    h = ScaledGelu()(RMSNorm()(L.Conv2D(32, 3, padding="same")(x)))
    for _ in range(2):
        y = L.Conv2D(32, 3, padding="same")(RMSNorm()(h))
        h = L.Add()([h, SqueezeExcite()(ScaledGelu()(y))])
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h))), (32, 32, 3)


class MLP(tf.Module):
    def __init__(self, width=64, blocks=4):
        rng = np.random.default_rng(0)
        self.w = [tf.Variable(rng.normal(0, (1 / width) ** 0.5, (width, width)).astype(np.float32))
                  for _ in range(2 * blocks)]
        self.head = tf.Variable(rng.normal(0, (1 / width) ** 0.5, (width, 10)).astype(np.float32))

    def __call__(self, x):
        for a, b in zip(self.w[::2], self.w[1::2]):
            mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
            h = (x - mean) * tf.math.rsqrt(var + 1e-5)
            x = x + tf.matmul(tf.nn.silu(tf.matmul(h, a)), b)
        return tf.matmul(x, self.head)


def tf_module():
    return MLP(), (64,)


def conv1d():
    x = keras.Input((64, 16), name="x")
    h = L.Conv1D(32, 5, padding="same", activation="relu")(x)
    h = L.MaxPooling1D(2)(L.SeparableConv1D(32, 5, padding="same", activation="relu")(h))
    h = L.SeparableConv1D(64, 3, padding="same", activation="relu")(h)
    h = L.Conv1D(64, 3, padding="valid", activation="relu", dilation_rate=2)(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h))), (64, 16)


def conv1d_bn():
    x = keras.Input((64, 16), name="x")
    h = x
    for width in (32, 32, 64):
        h = L.SeparableConv1D(width, 5, padding="same", use_bias=False)(h)
        h = L.ReLU()(L.BatchNormalization()(h))
    h = L.GlobalMaxPooling1D()(L.Conv1D(64, 3, strides=2, padding="same")(h))
    return keras.Model(x, L.Dense(10)(h)), (64, 16)


def conv1d_ln():
    x = keras.Input((64, 16), name="x")
    h = L.Conv1D(64, 3, padding="causal")(x)
    for _ in range(2):
        y = L.SeparableConv1D(64, 5, padding="same", activation="swish")(
            L.LayerNormalization()(h))
        h = L.Add()([h, L.Conv1D(64, 1)(y)])
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h))), (64, 16)


def conv1d_lstm():
    x = keras.Input((64, 16), name="x")
    h = L.AveragePooling1D(2)(L.SeparableConv1D(32, 5, padding="same", activation="relu")(x))
    h = L.GRU(32)(L.Bidirectional(L.LSTM(32, return_sequences=True))(h))
    return keras.Model(x, L.Dense(10)(h)), (64, 16)


def _sequence():
    x = keras.Input((32, 16), name="x")
    return x, L.Dense(64)(x)


def _image():
    return keras.Input((32, 32, 3), name="x")


def groupnorm():
    x = _image()
    h = L.Conv2D(32, 3, padding="same")(x)
    for width in (32, 64):
        h = L.Activation("swish")(L.GroupNormalization(8)(h))
        h = L.Conv2D(width, 3, padding="same")(h)
    h = L.Activation("swish")(L.GroupNormalization(8)(h))
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h)))


def unitnorm():
    x = keras.Input((64,), name="x")
    h = L.UnitNormalization()(L.Dense(128, activation="relu")(x))
    h = L.UnitNormalization()(L.Dense(64)(h))
    y = L.UnitNormalization(axis=-1)(L.Conv2D(16, 3)(L.Reshape((8, 8, 1))(x)))
    h = L.Concatenate()([h, L.Flatten()(y)])
    return keras.Model(x, L.Dense(10)(h))


def attention_layers():
    x, h = _sequence()
    q = L.Dense(64)(h)
    a = L.Attention()([q, h])
    b = L.AdditiveAttention()([q, h])
    c = L.Attention(use_scale=True, score_mode="dot")([h, h, h])
    h = L.LayerNormalization()(L.Add()([h, a, b, c]))
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h)))


def separable():
    x = _image()
    h = L.Conv2D(32, 3, strides=2, padding="same", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization()(h))
    for width, stride in ((64, 1), (64, 2), (128, 1)):
        h = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(h)
        h = L.ReLU(6.0)(L.BatchNormalization()(h))
        h = L.ReLU(6.0)(L.BatchNormalization()(L.Conv2D(width, 1, use_bias=False)(h)))
    h = L.SeparableConv2D(128, 3, padding="same", activation="relu")(h)
    h = L.SeparableConv2D(128, 3, padding="same", depth_multiplier=2)(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h)))


def resample():
    x = _image()
    h = L.Conv2D(16, 3, activation="relu")(L.ZeroPadding2D(1)(x))
    h = L.MaxPooling2D(2)(h)
    h = L.UpSampling2D(2)(L.Conv2D(16, 3, padding="same", activation="relu")(h))
    h = L.Cropping2D(((2, 2), (1, 3)))(h)
    h = L.Conv2D(32, 3, activation="relu")(L.ZeroPadding2D(((1, 2), (0, 1)))(h))
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h)))


def unet():
    x = _image()
    skips, h = [], x
    for width in (16, 32, 64):
        h = L.Conv2D(width, 3, padding="same", activation="relu")(h)
        h = L.Conv2D(width, 3, padding="same", activation="relu")(h)
        skips.append(h)
        h = L.MaxPooling2D(2)(h)
    h = L.Conv2D(128, 3, padding="same", activation="relu")(h)
    for width, skip in zip((64, 32, 16), skips[::-1]):
        h = L.Concatenate()([L.UpSampling2D(2)(h), skip])
        h = L.Conv2D(width, 3, padding="same", activation="relu")(h)
        h = L.Conv2D(width, 3, padding="same", activation="relu")(h)
    return keras.Model(x, L.Conv2D(2, 1)(h))


def global_max():
    x = _image()
    h = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    a = L.GlobalMaxPooling2D()(L.Conv2D(64, 3, strides=2, padding="same")(h))
    b = L.GlobalAveragePooling2D()(h)
    return keras.Model(x, L.Dense(10)(L.Concatenate()([a, b])))


def text_gap():
    ids = keras.Input((32,), dtype="int32", name="x")
    h = L.Embedding(1000, 64)(ids)
    h = L.GlobalAveragePooling1D()(h)
    h = L.Dense(64, activation="relu")(h)
    return keras.Model(ids, L.Dense(2)(h))


def activations():
    x = keras.Input((64,), name="x")
    h = x
    gelu_tanh = lambda t: keras.activations.gelu(t, approximate=True)  # noqa: E731
    for act in (gelu_tanh, "swish", "selu", "elu", "softplus", "mish"):
        h = L.Dense(64, activation=act)(h)
    return keras.Model(x, L.Dense(10)(h))


def dropout_train():
    x = _image()
    h = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    h = L.SpatialDropout2D(0.2)(h)
    h = L.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = L.Dropout(0.3)(L.GlobalAveragePooling2D()(h))
    h = L.Dropout(0.5)(L.Dense(64, activation="relu")(h))
    return keras.Model(x, L.Dense(10)(h))


class RandomDrop(L.Layer):
    def __init__(self, rate, noise_shape=None, **kw):
        super().__init__(**kw)
        self.rate, self.noise_shape = rate, noise_shape

    def call(self, x):
        shape = tf.shape(x) if self.noise_shape is None else self.noise_shape(tf.shape(x))
        keep = tf.cast(tf.random.uniform(shape) >= self.rate, x.dtype)
        return x * keep / (1 - self.rate)


def dropout_random():
    x = _image()
    h = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    h = RandomDrop(0.2, lambda s: tf.stack([s[0], 1, 1, s[3]]))(h)
    h = L.Conv2D(32, 3, padding="same", activation="relu")(h)
    h = RandomDrop(0.3)(L.GlobalAveragePooling2D()(h))
    h = RandomDrop(0.5)(L.Dense(64, activation="relu")(h))
    return keras.Model(x, L.Dense(10)(h))


def lambda_ops():
    x = keras.Input((32, 16), name="x")
    h = L.Dense(64, activation="relu")(x)
    m = L.Lambda(lambda t: tf.reduce_max(t, axis=1))(h)
    s = L.Lambda(lambda t: tf.math.reduce_std(t, axis=1))(h)
    lse = L.Lambda(lambda t: tf.reduce_logsumexp(t, axis=1))(h)
    n = L.Lambda(lambda t: tf.nn.l2_normalize(t, axis=-1))(h)
    v = L.Lambda(lambda t: tf.reduce_sum(t, axis=1))(n)
    p = L.Lambda(lambda t: tf.reduce_prod(1.0 + 0.1 * tf.tanh(t), axis=1))(h)
    h = L.Concatenate()([m, s, lse, v, p])
    return keras.Model(x, L.Dense(10)(h))


SWEEP = {f.__name__: f for f in (
    groupnorm, unitnorm, attention_layers, separable, resample, unet, global_max, text_gap,
    activations, dropout_train, dropout_random, lambda_ops)}
MODELS = {"channels_first": channels_first, "custom_layers": custom_layers,
          "tf_module": tf_module, "conv1d": conv1d, "conv1d_bn": conv1d_bn,
          "conv1d_ln": conv1d_ln, "conv1d_lstm": conv1d_lstm, **SWEEP, **SWEEP42}
GROUPS = {"sweep": SWEEP, "sweep42": SWEEP42}


def _export(name):
    keras.utils.set_random_seed(0)
    built = MODELS[name]()
    model, shape = built if isinstance(built, tuple) else (built, None)
    dtype = tf.float32 if shape else model.inputs[0].dtype  # the sweep's: its own input
    shape = shape or tuple(model.inputs[0].shape[1:])
    spec = (tf.TensorSpec((None, *shape), dtype, name="x"),)
    if isinstance(model, keras.Model) and len(model.inputs) > 1:  # sweep42's siamese
        spec = tuple(tf.TensorSpec((None, *i.shape[1:]), i.dtype, name=i.name)
                     for i in model.inputs)
        tf2onnx.convert.from_function(tf.function(lambda *xs: model(list(xs), training=False)),
                                      input_signature=spec, opset=17,
                                      output_path=f"{name}.onnx")
        return
    if isinstance(model, keras.Model) and name == "channels_first":
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17,
                                   output_path=f"{name}.onnx")
        return
    training = name == "dropout_train"
    function = tf.function(lambda x, m=model: m(x, training=training) if isinstance(
        m, keras.Model) else m(x), input_signature=spec)
    tf2onnx.convert.from_function(function, input_signature=spec, opset=17,
                                  output_path=f"{name}.onnx")


for name in [n for arg in sys.argv[1:] for n in GROUPS.get(arg, [arg])]:
    try:
        _export(name)
        print(name, "ok", flush=True)
    except Exception as exc:  # noqa: BLE001 - a layer tf2onnx cannot convert: say so, go on
        print(name, "FAILED", type(exc).__name__, str(exc)[:200], flush=True)
