"""Keras recurrent classifiers (2 layers of 128 units over 32 steps of 64 features, a Dense(10);
Keras' own initializers, ``keras.utils.set_random_seed(0)``) exported by tf2onnx at opset 17,
for ``benchmarks/real_accuracy_sequence.py --onnx`` (docs/recurrent.md's Keras table). Run in a
Keras 2 venv (``tensorflow-cpu==2.15.1 tf2onnx==1.17.0 'numpy<2' onnx==1.17.0``); writes
``keras_NAME.onnx`` to the current folder:

    python benchmarks/keras_recurrent.py lstm gru gru_v1 simplernn bilstm bigru bisimplernn \\
        lstm_pool lstm_state gobackwards masked embed_mask
    python benchmarks/real_accuracy_sequence.py --runs 16 --onnx keras_lstm.onnx,keras_gru.onnx
"""

import sys

import tensorflow as tf
import tf2onnx
from tensorflow import keras

L = keras.layers
STEPS, FEATURES, UNITS = 32, 64, 128


def _pair(layer, **kwargs):
    """Two stacked layers, the first returning its sequence."""
    return lambda x: layer(UNITS, **kwargs)(layer(UNITS, return_sequences=True, **kwargs)(x))


def _bidirectional(layer):
    return lambda x: L.Bidirectional(layer(UNITS))(
        L.Bidirectional(layer(UNITS, return_sequences=True))(x))


BODIES = {
    "lstm": _pair(L.LSTM),
    "gru": _pair(L.GRU),  # reset_after=True (the default): an ONNX GRU, linear_before_reset
    "gru_v1": _pair(L.GRU, reset_after=False),  # a Loop
    "simplernn": _pair(L.SimpleRNN),  # a Loop
    "bilstm": _bidirectional(L.LSTM),
    "bigru": _bidirectional(L.GRU),
    "bisimplernn": _bidirectional(L.SimpleRNN),  # Loops and ReverseSequence
    "lstm_pool": lambda x: L.GlobalAveragePooling1D()(
        L.Bidirectional(L.LSTM(UNITS, return_sequences=True))(x)),
    "lstm_state": lambda x: L.Concatenate()(list(L.LSTM(UNITS, return_state=True)(x)[1:])),
    "gobackwards": lambda x: L.GRU(UNITS, go_backwards=True)(
        L.LSTM(UNITS, return_sequences=True, go_backwards=True)(x)),  # ReverseSequence
    "masked": lambda x: _pair(L.LSTM)(L.Masking(mask_value=0.0)(x)),  # Loops reading the mask
}
# token ids [batch, STEPS] below 1000, id 0 the padding (Loops reading the mask)
IDS = {"embed_mask": lambda x: L.Bidirectional(L.LSTM(UNITS))(
    L.Embedding(1000, FEATURES, mask_zero=True)(x))}

for name in sys.argv[1:]:
    keras.utils.set_random_seed(0)
    shape, dtype = ((STEPS,), tf.int32) if name in IDS else ((STEPS, FEATURES), tf.float32)
    x = keras.Input(shape, name="x", dtype=dtype)
    model = keras.Model(x, L.Dense(10)({**BODIES, **IDS}[name](x)))
    spec = (tf.TensorSpec((None, *shape), dtype, name="x"),)
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=17,
                               output_path=f"keras_{name}.onnx")
    print(name, "ok", flush=True)
