"""Keras recurrent classifiers (2 layers of 128 units over 32 steps of 64 features, a Dense(10);
Keras' own initializers, ``keras.utils.set_random_seed(0)``) exported by tf2onnx at opset 17,
for ``benchmarks/real_accuracy_sequence.py --onnx`` (docs/recurrent.md's Keras table). Run in a
Keras 2 venv (``tensorflow-cpu==2.15.1 tf2onnx==1.17.0 'numpy<2' onnx==1.17.0``); writes
``keras_NAME.onnx`` to the current folder:

    python benchmarks/keras_recurrent.py lstm gru gru_v1 simplernn bilstm bigru bisimplernn \\
        lstm_pool lstm_state gobackwards masked embed_mask
    python benchmarks/real_accuracy_sequence.py --runs 16 --onnx keras_lstm.onnx,keras_gru.onnx

More variants (docs/robustness.md's Keras table): ``lstm_seq`` (a Dense on every step),
``lstm3`` (3 stacked), ``lstm_unroll`` (``unroll=True``: the steps written out),
``lstm_relu`` and ``simplernn_relu``, ``bigru_v1`` (Bidirectional GRU with
``reset_after=False``), ``bilstm_sum`` (``merge_mode="sum"``), ``bilstm_max``
(GlobalMaxPooling1D), ``conv_gru`` (Conv1D, MaxPooling1D, GRU), ``gru_state`` (GRU
``return_state``), ``lstm_td_relu`` and ``gru_td_tanh`` (TimeDistributed(Dense) with an
activation, docs/recurrent.md). ``--opset N`` and ``--batch1`` (a static batch of 1) write
``keras_NAME_opsetN.onnx`` / ``keras_NAME_b1.onnx``.
"""

import argparse

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
    "lstm_seq": lambda x: L.LSTM(UNITS, return_sequences=True)(  # a Dense on every step
        L.LSTM(UNITS, return_sequences=True)(x)),
    "lstm3": lambda x: L.LSTM(UNITS)(L.LSTM(UNITS, return_sequences=True)(
        L.LSTM(UNITS, return_sequences=True)(x))),
    "lstm_unroll": _pair(L.LSTM, unroll=True),
    "lstm_relu": _pair(L.LSTM, activation="relu"),
    "simplernn_relu": _pair(L.SimpleRNN, activation="relu"),
    "bigru_v1": lambda x: L.Bidirectional(L.GRU(UNITS, reset_after=False))(
        L.Bidirectional(L.GRU(UNITS, reset_after=False, return_sequences=True))(x)),
    "bilstm_sum": lambda x: L.Bidirectional(L.LSTM(UNITS), merge_mode="sum")(
        L.Bidirectional(L.LSTM(UNITS, return_sequences=True), merge_mode="sum")(x)),
    "bilstm_max": lambda x: L.GlobalMaxPooling1D()(
        L.Bidirectional(L.LSTM(UNITS, return_sequences=True))(x)),
    "conv_gru": lambda x: L.GRU(UNITS)(L.MaxPooling1D(2)(
        L.Conv1D(FEATURES, 5, padding="same", activation="relu")(x))),
    "gru_state": lambda x: L.GRU(UNITS, return_state=True)(x)[1],
    # docs/recurrent.md's third table
    "lstm_recdrop": _pair(L.LSTM, dropout=0.2, recurrent_dropout=0.2),
    "bilstm_ave": lambda x: L.Bidirectional(L.LSTM(UNITS), merge_mode="ave")(
        L.Bidirectional(L.LSTM(UNITS, return_sequences=True), merge_mode="ave")(x)),
    "bilstm_mul": lambda x: L.Bidirectional(L.LSTM(UNITS), merge_mode="mul")(
        L.Bidirectional(L.LSTM(UNITS, return_sequences=True), merge_mode="mul")(x)),
    "lstm_td": lambda x: L.GlobalAveragePooling1D()(L.TimeDistributed(L.Dense(UNITS))(
        L.LSTM(UNITS, return_sequences=True)(x))),
    "lstm_td_relu": lambda x: L.GlobalAveragePooling1D()(L.TimeDistributed(
        L.Dense(UNITS, activation="relu"))(L.LSTM(UNITS, return_sequences=True)(x))),
    "gru_td_tanh": lambda x: L.GlobalAveragePooling1D()(L.TimeDistributed(
        L.Dense(64, activation="tanh"))(L.GRU(UNITS, return_sequences=True)(x))),
    "convlstm1d": lambda x: L.Flatten()(L.ConvLSTM1D(16, 3, padding="same")(
        L.Reshape((STEPS, FEATURES, 1))(x))),
    "convlstm2d": lambda x: L.Flatten()(L.ConvLSTM2D(8, 3, padding="same")(
        L.Reshape((STEPS, 8, 8, 1))(x))),
}
# token ids [batch, STEPS] below 1000, id 0 the padding (Loops reading the mask)
IDS = {"embed_mask": lambda x: L.Bidirectional(L.LSTM(UNITS))(
    L.Embedding(1000, FEATURES, mask_zero=True)(x))}

def build(name: str):
    """The classifier ``name`` (``keras.utils.set_random_seed(0)`` first): a BODIES or IDS
    entry and a Dense(10)."""
    keras.utils.set_random_seed(0)
    shape, dtype = ((STEPS,), tf.int32) if name in IDS else ((STEPS, FEATURES), tf.float32)
    x = keras.Input(shape, name="x", dtype=dtype)
    return keras.Model(x, L.Dense(10)({**BODIES, **IDS}[name](x)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="+")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--batch1", action="store_true")
    args = parser.parse_args()
    suffix = (f"_opset{args.opset}" if args.opset != 17 else "") + ("_b1" if args.batch1 else "")
    for name in args.names:
        model = build(name)
        spec = (tf.TensorSpec((1 if args.batch1 else None, *model.inputs[0].shape[1:]),
                              model.inputs[0].dtype, name="x"),)
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=args.opset,
                                   output_path=f"keras_{name}{suffix}.onnx")
        print(name, "ok", flush=True)


if __name__ == "__main__":
    main()
