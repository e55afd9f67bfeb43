"""The Keras sweep of stop 42 (docs/robustness.md, "Keras sweep, stop 42"): Keras 3 layers and
small models not measured before, each a function returning a ``keras.Model`` (random init;
``benchmarks/keras_variants.py sweep42`` seeds, exports through ``tf.function`` at opset 17 with a
dynamic batch, and writes ``NAME.onnx``). Run in a Keras 3 + TensorFlow + tf2onnx venv.

- ``conv3d``: Conv3D + MaxPooling3D + Conv3D/BatchNorm/ReLU + GlobalAveragePooling3D on 8x16x16x3.
- ``conv_transpose``: a conv autoencoder: two strided Conv2Ds, two Conv2DTranspose (stride 2,
  ``same``) decoders, a ``valid`` Conv2DTranspose and a 1x1 Conv2D.
- ``conv1d_depthwise``: DepthwiseConv1D (``depth_multiplier=2``) + BatchNorm + ReLU,
  SeparableConv1D (stride 2), a strided DepthwiseConv1D, GlobalAveragePooling1D.
- ``bidirectional_seq``: Bidirectional LSTM and Bidirectional GRU with ``return_sequences``,
  a per-step Dense, GlobalAveragePooling1D.
- ``convlstm``: two stacked ConvLSTM2D (``return_sequences`` then the last state) on
  6 steps of 12x12x3; ``convlstm1d``: two stacked ConvLSTM1D on 6 steps of 16x4.
- ``layernorm_axes``: LayerNormalization over ``axis=[1, 2, 3]`` and over the channels of a
  conv map, RMSNormalization over the channels.
- ``batchnorm_modes``: a BatchNormalization called with ``training=True`` inside a functional
  model (batch statistics in the export) beside ones in inference mode.
- ``mask_lstm``: Embedding(``mask_zero=True``) + LSTM(``return_sequences``) + LSTM.
- ``act_layers``: PReLU, LeakyReLU(0.2), ELU, ReLU(``negative_slope``, ``threshold``) layers.
- ``merges``: Multiply, Subtract, Average, Maximum, Minimum and Dot(``normalize=True``) merges.
- ``seq2seq``: an LSTM encoder whose states start an LSTM decoder fed by RepeatVector,
  TimeDistributed Dense.
- ``siamese``: one shared Dense tower on two inputs, the absolute difference, a sigmoid head.
"""

import keras

L = keras.layers


def conv3d():
    x = keras.Input((8, 16, 16, 3), name="x")
    h = L.MaxPooling3D(2)(L.Conv3D(8, 3, padding="same", activation="relu")(x))
    h = L.ReLU()(L.BatchNormalization()(L.Conv3D(16, 3, padding="same", use_bias=False)(h)))
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling3D()(h)))


def conv_transpose():
    x = keras.Input((32, 32, 3), name="x")
    h = L.Conv2D(16, 3, strides=2, padding="same", activation="relu")(x)
    h = L.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
    h = L.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(h)
    h = L.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu")(h)
    h = L.Conv2DTranspose(8, 3, padding="valid", activation="relu")(h)
    return keras.Model(x, L.Conv2D(3, 1)(h))


def conv1d_depthwise():
    x = keras.Input((64, 16), name="x")
    h = L.DepthwiseConv1D(5, depth_multiplier=2, padding="same", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization()(h))
    h = L.SeparableConv1D(64, 3, strides=2, padding="same", activation="relu")(h)
    h = L.DepthwiseConv1D(3, strides=2, padding="same", activation="relu")(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h)))


def bidirectional_seq():
    x = keras.Input((32, 16), name="x")
    h = L.Bidirectional(L.LSTM(32, return_sequences=True))(x)
    h = L.Bidirectional(L.GRU(32, return_sequences=True))(h)
    h = L.Dense(32, activation="relu")(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h)))


def convlstm():
    x = keras.Input((6, 12, 12, 3), name="x")
    h = L.ConvLSTM2D(8, 3, padding="same", return_sequences=True)(x)
    h = L.ConvLSTM2D(8, 3, padding="same")(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h)))


def convlstm1d():
    x = keras.Input((6, 16, 4), name="x")
    h = L.ConvLSTM1D(8, 3, padding="same", return_sequences=True)(x)
    h = L.ConvLSTM1D(8, 3, padding="same")(h)
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling1D()(h)))


def layernorm_axes():
    x = keras.Input((16, 16, 3), name="x")
    h = L.LayerNormalization(axis=[1, 2, 3])(L.Conv2D(16, 3, padding="same")(x))
    h = L.LayerNormalization()(L.Conv2D(32, 3, padding="same", activation="relu")(h))
    h = L.RMSNormalization()(L.Conv2D(32, 3, padding="same")(h))
    return keras.Model(x, L.Dense(10)(L.GlobalAveragePooling2D()(h)))


def batchnorm_modes():
    x = keras.Input((16, 16, 3), name="x")
    h = L.Conv2D(16, 3, padding="same", use_bias=False)(x)
    h = L.ReLU()(L.BatchNormalization()(h, training=True))
    h = L.Conv2D(32, 3, padding="same", use_bias=False)(h)
    h = L.ReLU()(L.BatchNormalization()(h))
    d = L.Dense(32)(L.GlobalAveragePooling2D()(h))
    d = L.ReLU()(L.BatchNormalization()(d, training=True))
    return keras.Model(x, L.Dense(10)(d))


def mask_lstm():
    ids = keras.Input((16,), dtype="int32", name="x")
    h = L.Embedding(50, 32, mask_zero=True)(ids)
    h = L.LSTM(32, return_sequences=True)(h)
    return keras.Model(ids, L.Dense(2)(L.LSTM(32)(h)))


def act_layers():
    x = keras.Input((64,), name="x")
    h = L.PReLU()(L.Dense(64)(x))
    h = L.LeakyReLU(0.2)(L.Dense(64)(h))
    h = L.ELU()(L.Dense(64)(h))
    h = L.ReLU(negative_slope=0.1, threshold=0.5)(L.Dense(64)(h))
    return keras.Model(x, L.Dense(10)(h))


def merges():
    x = keras.Input((64,), name="x")
    a, b, c = (L.Dense(64)(x) for _ in range(3))
    h = L.Concatenate()([L.Multiply()([a, b]), L.Subtract()([a, c]), L.Average()([a, b, c]),
                         L.Maximum()([b, c]), L.Minimum()([a, c])])
    d = L.Dot(axes=1, normalize=True)([a, b])
    return keras.Model(x, L.Dense(10)(L.Concatenate()([L.Dense(32)(h), d])))


def seq2seq():
    x = keras.Input((20, 8), name="x")
    encoded, state_h, state_c = L.LSTM(32, return_state=True)(x)
    h = L.LSTM(32, return_sequences=True)(L.RepeatVector(10)(encoded),
                                         initial_state=[state_h, state_c])
    return keras.Model(x, L.TimeDistributed(L.Dense(8))(h))


def siamese():
    a, b = keras.Input((32,), name="a"), keras.Input((32,), name="b")
    tower = keras.Sequential([L.Dense(64, activation="relu"), L.Dense(32)])
    d = L.Lambda(lambda t: keras.ops.abs(t[0] - t[1]))([tower(a), tower(b)])
    return keras.Model([a, b], L.Dense(1, activation="sigmoid")(d))


SWEEP42 = {f.__name__: f for f in (
    conv3d, conv_transpose, conv1d_depthwise, bidirectional_seq, convlstm, convlstm1d,
    layernorm_axes, batchnorm_modes, mask_lstm, act_layers, merges, seq2seq, siamese)}
