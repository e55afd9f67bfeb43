"""Small Keras 3 transformers exported by tf2onnx, against onnxruntime tensor by tensor: a
text encoder (Embedding + positional Embedding, 2 blocks of MultiHeadAttention, LayerNorm and
a ReLU FFN; 32 tokens of a 512-token vocabulary, width 64, 4 heads) and a ViT-like classifier
(32x32 images, a 4x4 patch Conv2D, the same 2 blocks, mean over tokens, Dense 10). Batch 8.
With ``--sweep`` (docs/robustness.md, "Keras sweep, stop 40") also: ``mha_post``, ``mha_pre``,
``mha_causal`` (encoders on 32 tokens of 16 features: post-norm, pre-norm, pre-norm with
``use_causal_mask=True``; tanh-GELU FFNs: Keras' exact GELU becomes an ``Erfc`` that tf2onnx
leaves, refused in one line), ``mha_mask`` (ids of an 8-word vocabulary, an ``attention_mask``
from ``ids != 0``), ``vit_cls`` (a class token, a position Embedding, pre-norm blocks with
Dropout, the class token's LayerNorm).

Export in a venv with TensorFlow, Keras 3 and tf2onnx (tensorflow-cpu 2.21, keras 3.15,
tf2onnx 1.17), compare where onnxinit's test environment is::

    python benchmarks/keras_transformers.py --export DIR [--sweep]  # TF venv: DIR/text.onnx ...
    PYTHONPATH=$PWD python benchmarks/keras_transformers.py --compare DIR [--sweep] [--worst 20] \
        [--runs 16]

The comparison prints, per model, the share of float activations within 10% and within 2x of
the measured variance (``tests/real/compare``, ``--runs`` batches of 8, default 2), and the
worst tensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

B, T, V, D, H = 8, 32, 512, 64, 4
MODELS = ("text", "vit")
SWEEP = ("mha_post", "mha_pre", "mha_causal", "mha_mask", "vit_cls")


def export(folder: Path, names=MODELS) -> None:
    import keras
    import tensorflow as tf
    import tf2onnx
    from keras import layers

    class Positions(layers.Layer):
        """A learned embedding of each position, added."""

        def __init__(self, n, d, **kw):
            super().__init__(**kw)
            self.table, self.n = layers.Embedding(n, d), n

        def call(self, x):
            return x + self.table(tf.range(self.n))

    def block(x):
        a = layers.MultiHeadAttention(num_heads=H, key_dim=D // H)(x, x)
        x = layers.LayerNormalization(epsilon=1e-6)(x + a)
        f = layers.Dense(D)(layers.Dense(2 * D, activation="relu")(x))
        return layers.LayerNormalization(epsilon=1e-6)(x + f)

    def text():
        ids = keras.Input((T,), batch_size=B, dtype="int32")
        x = Positions(T, D)(layers.Embedding(V, D)(ids))
        for _ in range(2):
            x = block(x)
        return keras.Model(ids, x), tf.TensorSpec((B, T), tf.int32)

    def vit():
        image = keras.Input((32, 32, 3), batch_size=B)
        x = layers.Reshape((64, D))(layers.Conv2D(D, 4, strides=4)(image))
        x = Positions(64, D)(x)
        for _ in range(2):
            x = block(x)
        x = layers.Dense(10)(layers.GlobalAveragePooling1D()(x))
        return keras.Model(image, x), tf.TensorSpec((B, 32, 32, 3), tf.float32)

    def gelu_tanh(t):
        return keras.activations.gelu(t, approximate=True)

    def tokens(vocab=None):
        if vocab:
            ids = keras.Input((T,), dtype="int32")
            return ids, layers.Embedding(vocab, D)(ids)
        x = keras.Input((T, 16))
        return x, layers.Dense(D)(x)

    def ffn(x, act=gelu_tanh):
        return layers.Dense(D)(layers.Dense(2 * D, activation=act)(x))

    def pre_norm(causal=False):
        x, h = tokens()
        for _ in range(2):
            n = layers.LayerNormalization()(h)
            h = h + layers.MultiHeadAttention(H, D // H)(n, n, use_causal_mask=causal)
            h = h + ffn(layers.LayerNormalization()(h))
        return keras.Model(x, layers.Dense(10)(layers.LayerNormalization()(h)[:, -1]))

    def mha_post():
        x, h = tokens()
        for _ in range(2):
            h = layers.LayerNormalization()(h + layers.MultiHeadAttention(H, D // H)(h, h))
            h = layers.LayerNormalization()(h + ffn(h))
        return keras.Model(x, layers.Dense(10)(layers.GlobalAveragePooling1D()(h)))

    class PadMask(layers.Layer):
        def call(self, ids):
            m = tf.cast(tf.not_equal(ids, 0), tf.float32)
            return m[:, None, :] * tf.ones_like(m)[:, :, None]

    def mha_mask():
        ids, h = tokens(vocab=8)
        mask = PadMask()(ids)
        for _ in range(2):
            a = layers.MultiHeadAttention(H, D // H)(h, h, attention_mask=mask)
            h = layers.LayerNormalization()(h + a)
            h = layers.LayerNormalization()(h + ffn(h, "relu"))
        return keras.Model(ids, layers.Dense(10)(layers.GlobalAveragePooling1D()(h)))

    class ClassToken(layers.Layer):
        def build(self, shape):
            self.cls = self.add_weight(name="cls", shape=(1, 1, shape[-1]), initializer="zeros")

        def call(self, x):
            return tf.concat([tf.tile(self.cls, [tf.shape(x)[0], 1, 1]), x], axis=1)

    def vit_cls():
        image = keras.Input((32, 32, 3))
        h = layers.Reshape((64, D))(layers.Conv2D(D, 4, strides=4)(image))
        h = Positions(65, D)(ClassToken()(h))
        for _ in range(2):
            n = layers.LayerNormalization(epsilon=1e-6)(h)
            h = layers.Add()([h, layers.MultiHeadAttention(H, D // H, dropout=0.1)(n, n)])
            n = layers.LayerNormalization(epsilon=1e-6)(h)
            h = layers.Add()([h, layers.Dropout(0.1)(ffn(n))])
        h = layers.LayerNormalization(epsilon=1e-6)(h)
        return keras.Model(image, layers.Dense(10)(h[:, 0]))

    builds = {"text": text, "vit": vit, "mha_post": mha_post, "mha_pre": pre_norm,
              "mha_causal": lambda: pre_norm(causal=True), "mha_mask": mha_mask,
              "vit_cls": vit_cls}
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        keras.utils.set_random_seed(0)
        built = builds[name]()
        model, spec = built if isinstance(built, tuple) else (built, tf.TensorSpec(
            (None, *built.inputs[0].shape[1:]), built.inputs[0].dtype))
        fn = tf.function(lambda x, model=model: model(x, training=False))
        tf2onnx.convert.from_function(fn, input_signature=[spec], opset=17,
                                      output_path=str(folder / f"{name}.onnx"))


def compare_all(folder: Path, worst: int, runs: int = 2, names=MODELS) -> None:
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests.real
    from tests.real.compare import compare

    for name in names:
        rows = compare(folder / f"{name}.onnx", batch_size=B, runs=runs).rows
        within = sum(r.within for r in rows) / len(rows)
        twice = sum(r.ratio <= 2 for r in rows) / len(rows)
        print(f"{name}: {len(rows)} tensors, {within:.1%} within 10%, {twice:.1%} within 2x")
        for r in sorted(rows, key=lambda r: -r.ratio)[:worst]:
            print(f"  {r.ratio:7.2f}x  {r.op:18s} {r.tensor}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", type=Path, help="export both models into this folder")
    parser.add_argument("--compare", type=Path, help="compare the exports in this folder")
    parser.add_argument("--worst", type=int, default=10, help="worst tensors listed per model")
    parser.add_argument("--runs", type=int, default=2, help="batches of 8 measured")
    parser.add_argument("--sweep", action="store_true", help="the sweep's five models too")
    args = parser.parse_args()
    names = MODELS + SWEEP if args.sweep else MODELS
    if args.export:
        export(args.export, names)
    if args.compare:
        compare_all(args.compare, args.worst, args.runs, names)
    if not (args.export or args.compare):
        parser.error("give --export DIR or --compare DIR")


if __name__ == "__main__":
    main()
