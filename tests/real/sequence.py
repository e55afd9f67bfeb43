"""Real sequence and attention networks (Hugging Face GPT-2 and BERT from config objects,
torchvision ViT and Swin, torch LSTM/GRU/RNN classifiers; random initialization, nothing
downloaded), exported in training mode exactly as the README says, and compared tensor by tensor
with onnxruntime.

Each model comes in two sizes: ``"full"`` (the architecture's default configuration: GPT-2 and
BERT-base at 12 layers, vit_b_16 and swin_t at 224x224, recurrent classifiers with 2 layers of
hidden 128 over 32 steps) for ``benchmarks/real_accuracy_sequence.py``, and ``"small"`` (the same
code paths at a size a CI run affords: 2-3 layers, narrow, short sequences, small images) for
``tests/real/test_sequence_models.py``.

:func:`compare` predicts with ``onnxinit.analyze`` and measures with onnxruntime under the
analysis's training semantics (Dropout as identity, BatchNormalization on batch statistics):
the same function PyTorch computes in ``train()`` mode with dropout probabilities at 0. Random
ops (Swin's stochastic depth) draw new masks each run, so such models are measured over several
batches in one session, pooled; tensors computed from random ops alone (the masks) are left out.
Only ``onnxinit.analyze``, ``onnxinit.measure`` and ``onnxinit.feeds`` are used, so the same code
measures another checkout of onnxinit (the benchmark's before/after).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import onnxinit
from onnxinit.feeds import synthetic_feeds
from onnxinit.measure import measurable_model
from onnxinit.runtime import make_session

from .compare import auxiliary, random_only, seeded
from .exports import export_directory, export_module
from . import recurrent_models as more


@dataclass(frozen=True)
class Spec:
    build: Callable[[], object]  # the torch module
    shape: tuple[int, ...]  # one example's input shape (no batch axis)
    vocab: int = 0  # > 0: integer token ids below this bound, input "input_ids"
    runs: int = 1  # measured batches (random ops draw new masks each run)


def last_hidden_state(model):
    """transformers' forward takes keywords and returns a ModelOutput: export a wrapper that
    takes the token ids positionally and returns the hidden states."""
    import torch

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids):
            return self.model(input_ids=input_ids).last_hidden_state

    return LastHiddenState()


def _gpt2(**config):
    def build():
        from transformers import GPT2Config, GPT2Model

        # eager attention: the SDPA path does not export with the TorchScript exporter
        return last_hidden_state(GPT2Model(GPT2Config(attn_implementation="eager", **config)))

    return build


def _bert(**config):
    def build():
        from transformers import BertConfig, BertModel

        return last_hidden_state(BertModel(BertConfig(attn_implementation="eager", **config)))

    return build


def _llama(**config):
    """Hugging Face LlamaModel: RMSNorm written out as ops (Pow, ReduceMean, Add, Sqrt, Div,
    Mul), rotary position embeddings, SwiGLU MLP, causal mask."""

    def build():
        from transformers import LlamaConfig, LlamaModel

        return last_hidden_state(LlamaModel(LlamaConfig(attn_implementation="eager", **config)))

    return build


def _torchvision(name: str, **kwargs):
    def build():
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    return build


def _vit(**kwargs):
    def build():
        from torchvision.models.vision_transformer import VisionTransformer

        return VisionTransformer(**kwargs)

    return build


def _swin(**kwargs):
    def build():
        from torchvision.models.swin_transformer import SwinTransformer

        return SwinTransformer(**kwargs)

    return build


def _recurrent(kind: str, features: int, hidden: int, layers: int, classes: int = 10,
               bidirectional: bool = False, batch_first: bool = True, head: str = "last",
               initial: bool = False, **options):
    """``nn.LSTM``/``nn.GRU``/``nn.RNN`` and a Linear classifier on the last step (``head``
    "h_n"/"c_n": on the last layer's final states, both directions concatenated; "max": on the
    maximum over the steps); ``initial``:
    initial states given (0.5 and 0.3 everywhere); ``options``: the module's own
    (``nonlinearity``)."""

    def build():
        import torch
        from torch import nn

        directions = 2 if bidirectional else 1

        class Classifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = getattr(nn, kind)(features, hidden, layers, batch_first=batch_first,
                                             bidirectional=bidirectional, **options)
                self.head = nn.Linear(hidden * directions, classes)

            def forward(self, x):
                if initial:
                    shape = (layers * directions, x.shape[0 if batch_first else 1], hidden)
                    h0 = torch.zeros(shape) + 0.5
                    state = (h0, torch.zeros(shape) + 0.3) if kind == "LSTM" else h0
                    out, final = self.rnn(x, state)
                else:
                    out, final = self.rnn(x)
                if head == "last":
                    return self.head(out[:, -1] if batch_first else out[-1])
                if head == "max":
                    return self.head(out.max(1 if batch_first else 0).values)
                final = final[0 if head == "h_n" else 1] if kind == "LSTM" else final
                return self.head(torch.cat(list(final[-directions:]), -1))

        return Classifier()

    return build


# A recurrent classifier's last step and logits are 8 x hidden (x 10) values that share each
# sample's input: on one batch of 8 their variance reads up to 17% off (the small GRU's last
# state 0.83-0.85x, 0.96-0.98x over 64 batches; the full GRU's logits 0.88x, 1.005x). They are
# cheap to run: measured over 16 batches.
_RECURRENT_RUNS = 16

# The small ViT (17 tokens, 0.8 correlated) and Llama: on one batch of 8 their attention
# outputs read 0.77-0.89x (ViT, layers 1-2) and 1.21-1.24x (Llama, layer 1), their first
# RMSNorm 1.13-1.20x; over 16 batches every tensor of both is within 10%. Measured over 16.
_FEW_TOKEN_RUNS = 16

FULL: dict[str, Spec] = {
    "gpt2": Spec(_gpt2(), (128,), vocab=50257),
    "bert_base": Spec(_bert(), (128,), vocab=30522),
    "vit_b_16": Spec(_torchvision("vit_b_16"), (3, 224, 224)),
    "swin_t": Spec(_torchvision("swin_t"), (3, 224, 224), runs=4),
    "lstm": Spec(_recurrent("LSTM", 64, 128, 2), (32, 64), runs=_RECURRENT_RUNS),
    "gru": Spec(_recurrent("GRU", 64, 128, 2), (32, 64), runs=_RECURRENT_RUNS),
    "llama": Spec(_llama(hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=8, vocab_size=32000,
                         max_position_embeddings=256), (128,), vocab=32000),
}

SMALL: dict[str, Spec] = {
    "gpt2": Spec(_gpt2(n_embd=64, n_layer=3, n_head=4, n_positions=64, vocab_size=512),
                 (32,), vocab=512),
    "bert": Spec(_bert(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=256, vocab_size=512, max_position_embeddings=64),
                 (32,), vocab=512),
    "vit": Spec(_vit(image_size=32, patch_size=8, num_layers=3, num_heads=4, hidden_dim=64,
                     mlp_dim=256), (3, 32, 32), runs=_FEW_TOKEN_RUNS),
    "swin": Spec(_swin(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                       window_size=[4, 4], stochastic_depth_prob=0.0), (3, 64, 64)),
    "lstm": Spec(_recurrent("LSTM", 16, 32, 2), (16, 16), runs=_RECURRENT_RUNS),
    "gru": Spec(_recurrent("GRU", 16, 32, 2), (16, 16), runs=_RECURRENT_RUNS),
    # its last step (Gather) read 1.11x over 32 batches while one per-step variance profile
    # was shared by the two directions (the backward one's last index is its first step);
    # 0.99-1.0x since each direction keeps its own (token_field.attach)
    "rnn_bidirectional": Spec(_recurrent("RNN", 16, 32, 2, bidirectional=True), (16, 16)),
    # its score (Linear(32, 1) on every step) and softmax read 0.77x and 0.76x while the units
    # of a state counted as independent (9 of 12 tensors within 10%); with the covariance
    # between them (rules/recurrent_units.py) every tensor is
    "lstm_attention_pool": Spec(more.attention_pool(16, 32), (16, 16), runs=_RECURRENT_RUNS),
    "llama": Spec(_llama(hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                         max_position_embeddings=64), (32,), vocab=512, runs=_FEW_TOKEN_RUNS),
}

def _variant(kind: str, layers: int = 2, **options) -> Spec:
    """A recurrent classifier of hidden 128 over 32 steps of 64 features (docs/recurrent.md)."""
    return Spec(_recurrent(kind, 64, 128, layers, **options), (32, 64), runs=_RECURRENT_RUNS)


# the recurrent variants of docs/recurrent.md (`benchmarks/real_accuracy_sequence.py --size
# recurrent`)
RECURRENT: dict[str, Spec] = {
    "bilstm": _variant("LSTM", bidirectional=True),
    "bigru": _variant("GRU", bidirectional=True),
    "birnn_tanh": _variant("RNN", bidirectional=True),
    "birnn_relu": _variant("RNN", bidirectional=True, nonlinearity="relu"),
    "rnn_relu": _variant("RNN", nonlinearity="relu"),
    "bilstm_3": _variant("LSTM", 3, bidirectional=True),
    "bigru_3": _variant("GRU", 3, bidirectional=True),
    "lstm_3_time_first": _variant("LSTM", 3, batch_first=False),
    "bilstm_time_first": _variant("LSTM", bidirectional=True, batch_first=False),
    "bilstm_h_n": _variant("LSTM", bidirectional=True, head="h_n"),
    "bilstm_c_n": _variant("LSTM", bidirectional=True, head="c_n"),
    "bigru_h_n": _variant("GRU", bidirectional=True, head="h_n"),
    "bilstm_initial": _variant("LSTM", bidirectional=True, initial=True),
    "bigru_initial": _variant("GRU", bidirectional=True, initial=True),
    "bilstm_max": _variant("LSTM", bidirectional=True, head="max"),
}

def _spec(build, shape=(32, 64), vocab: int = 0) -> Spec:
    return Spec(build, shape, vocab=vocab, runs=_RECURRENT_RUNS)


# the recurrent exports of docs/recurrent.md's second table (`--size recurrent_more`): wider,
# narrower-input and deeper layers, cells unrolled by a Python loop, an encoder-decoder,
# attention pooling, language models, a Conv1d before a GRU (hidden 128, 32 steps unless said)
RECURRENT_MORE: dict[str, Spec] = {
    "lstm_h512": _spec(_recurrent("LSTM", 64, 512, 1)),
    "gru_h512": _spec(_recurrent("GRU", 64, 512, 1)),
    "lstm_in300": _spec(_recurrent("LSTM", 300, 128, 1), (32, 300)),
    "gru_in300": _spec(_recurrent("GRU", 300, 128, 1), (32, 300)),
    "lstm_4": _spec(_recurrent("LSTM", 64, 128, 4)),
    "gru_4": _spec(_recurrent("GRU", 64, 128, 4)),
    "birnn_relu_1": _spec(_recurrent("RNN", 64, 128, 1, bidirectional=True,
                                     nonlinearity="relu")),
    "birnn_tanh_1": _spec(_recurrent("RNN", 64, 128, 1, bidirectional=True)),
    "lstmcell_loop": _spec(more.cell_loop("LSTMCell")),
    "grucell_loop": _spec(more.cell_loop("GRUCell")),
    "rnncell_loop": _spec(more.cell_loop("RNNCell")),
    "seq2seq_gru": _spec(more.seq2seq()),
    "seq2seq_tokens": _spec(more.seq2seq(vocab=1000), (32,), vocab=1000),
    "lstm_attention_pool": _spec(more.attention_pool()),
    "bilstm_attention_pool": _spec(more.attention_pool(bidirectional=True)),
    "lstm_lm": _spec(more.language_model(), (32,), vocab=1000),
    "lstm_lm_tied": _spec(more.language_model(tied=True), (32,), vocab=1000),
    "conv_gru": _spec(more.conv_gru()),
}

SIZES = {"full": FULL, "small": SMALL, "recurrent": RECURRENT, "recurrent_more": RECURRENT_MORE}


def export(spec: Spec, path: Path, seed: int = 0) -> Path:
    """Export in training mode as the README says (:func:`.exports.export_module`), the module
    built with torch's seed ``seed``."""
    import torch

    torch.manual_seed(seed)
    return export_module(spec.build(), spec.shape, path,
                         input_name="input_ids" if spec.vocab else "x", integer_input=spec.vocab)


_CACHE: dict[tuple[str, str], Path] = {}


def exported(size: str, name: str) -> Path:
    """Path of model ``name`` of ``size`` ("small"/"full"), exported once per process
    (``ONNXINIT_EXPORT_CACHE`` names a directory that keeps them across processes)."""
    key = (size, name)
    if key not in _CACHE:
        path = export_directory("onnxinit-sequence-") / f"{name}_{size}.onnx"
        if not path.exists():
            export(SIZES[size][name], path)
        _CACHE[key] = path
    return _CACHE[key]


@dataclass
class Comparison:
    predicted: np.ndarray  # NaN where not predicted (see ``missing``)
    measured: np.ndarray
    missing: np.ndarray  # bool: the analysis gave the tensor no prediction
    tensors: list[str]
    ops: list[str]
    analyze_s: float
    error: str | None = None  # analyze refused the model (a PredictionError names the node)

    @property
    def coverage(self) -> float:
        return float(np.mean(~self.missing)) if self.tensors else 0.0

    @property
    def ratios(self) -> np.ndarray:
        """predicted / measured: 1 where both are 0, inf where not predicted or not finite."""
        with np.errstate(divide="ignore", invalid="ignore"):
            r = np.where(self.predicted == self.measured, 1.0, self.predicted / self.measured)
        return np.where(np.isfinite(r), r, np.inf)

    @property
    def within_10(self) -> float:
        return float(np.mean(np.abs(self.ratios - 1) <= 0.10)) if self.tensors else 0.0

    @property
    def within_2x(self) -> float:
        r = self.ratios
        return float(np.mean((r <= 2) & (r >= 0.5))) if self.tensors else 0.0

    @property
    def median_ratio(self) -> float:
        return float(np.median(self.ratios)) if self.tensors else float("nan")

    @property
    def non_finite(self) -> bool:
        """A prediction is NaN or infinite, or the analysis refused the model for one."""
        return bool((~np.isfinite(self.predicted) & ~self.missing).any()) or self.error is not None

    def worst(self, n: int = 8) -> list[str]:
        r = self.ratios
        order = np.argsort(-np.maximum(r, 1 / np.maximum(r, 1e-300)))[:n]
        return [f"{r[i]:.3f} {self.ops[i]} {self.tensors[i]}" for i in order]


def measured_variances(graph, tensors: list[str], batch_size: int, runs: int) -> dict[str, float]:
    """Variance of each tensor pooled over ``runs`` seeded batches in one onnxruntime session
    (elements that are -inf, an additive mask, left out)."""
    session = make_session(seeded(measurable_model(graph, tensors)), device="cpu")
    names = [o.name for o in session.get_outputs()]
    wanted = set(tensors)
    s0, s1, s2 = {}, {}, {}
    for run in range(runs):
        feeds = synthetic_feeds(graph, seed=run)
        for name, value in zip(names, session.run(names, feeds)):
            if name not in wanted:
                continue
            v = np.asarray(value, dtype=np.float64)
            v = v[~np.isneginf(v)] if np.isneginf(v).any() and not np.isneginf(v).all() else v
            s0[name] = s0.get(name, 0) + v.size
            s1[name] = s1.get(name, 0.0) + v.sum()
            s2[name] = s2.get(name, 0.0) + (v * v).sum()
    return {n: s2[n] / s0[n] - (s1[n] / s0[n]) ** 2 for n in s0}


def compare(path: str | Path, batch_size: int = 8, runs: int = 1) -> Comparison:
    """Predicted against measured variance of every float activation tensor of ``path``: as in
    ``tests/real/compare.py``, auxiliary outputs that are not activations (BatchNormalization's
    running statistics, LayerNormalization's saved statistics, Dropout's mask) are left out."""
    start = time.perf_counter()
    try:
        analysis = onnxinit.analyze(path, batch_size=batch_size)
    except onnxinit.OnnxInitError as exc:  # a non-finite prediction: the analysis refuses
        return Comparison(np.array([]), np.array([]), np.array([], dtype=bool), [], [],
                          time.perf_counter() - start, error=str(exc))
    analyze_s = time.perf_counter() - start
    graph = analysis.graph
    predicted = {t.name: t.var for t in analysis.tensors}
    excluded = random_only(graph) | auxiliary(graph) | set(graph.input_names)
    user = graph.user_tensors()  # the file's own tensors, not those the passes add
    tensors = [t for t in graph.float_activations() if t not in excluded and t in user]
    measured = measured_variances(graph, tensors, batch_size, runs)
    tensors = [t for t in tensors if t in measured]
    return Comparison(
        predicted=np.array([predicted.get(t, np.nan) for t in tensors], dtype=np.float64),
        measured=np.array([measured[t] for t in tensors]),
        missing=np.array([t not in predicted for t in tensors], dtype=bool),
        tensors=tensors,
        ops=[user[t][1] for t in tensors],
        analyze_s=analyze_s,
    )
