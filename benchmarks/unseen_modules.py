"""Small torch modules for ``benchmarks/unseen_exports.py``: layers and export variants the
architectures there do not cover (recurrent layers with initial states and projections,
``nn.TransformerDecoder``, attention with a padding mask and averaged weights, 1-d and
transposed convolutions, norms over several axes, bags of embeddings, einsum contractions).

``MODULES[name]() -> (module, input shape without the batch axis, vocabulary)``: the vocabulary
is 0 for a float input, else the input is token ids below it.
"""

from __future__ import annotations

import torch
from torch import nn


class _Recurrent(nn.Module):
    """A recurrent layer fed its initial states (learnt, broadcast over the batch)."""

    def __init__(self, layer: nn.Module, states: int):
        super().__init__()
        self.layer = layer
        rows = layer.num_layers * (2 if layer.bidirectional else 1)
        hidden = getattr(layer, "proj_size", 0) or layer.hidden_size
        sizes = [hidden, layer.hidden_size][:states]
        self.states = nn.ParameterList([nn.Parameter(0.5 * torch.randn(rows, 1, size))
                                        for size in sizes])

    def forward(self, x):
        batch = x.shape[0] if self.layer.batch_first else x.shape[1]
        states = [s.expand(-1, batch, -1).contiguous() for s in self.states]
        out, _ = self.layer(x, tuple(states) if len(states) > 1 else states[0])
        return out


class _Decoder(nn.Module):
    """``nn.TransformerDecoder`` with a causal mask over its own tokens and cross-attention to a
    memory projected from the same input."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerDecoderLayer(32, 4, 64, dropout=0.1, batch_first=True)
        self.decoder = nn.TransformerDecoder(layer, 2)
        self.memory = nn.Linear(32, 32)

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.decoder(x, self.memory(x), tgt_mask=mask, tgt_is_causal=True)


class _PaddedAttention(nn.Module):
    """``nn.MultiheadAttention`` with a key padding mask (the last quarter of the keys) and
    its head-averaged weights as a second output."""

    def __init__(self, need_weights: bool = True):
        super().__init__()
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True, kdim=24, vdim=24)
        self.keys = nn.Linear(32, 24)
        self.need_weights = need_weights

    def forward(self, x):
        keys = self.keys(x)
        padded = torch.arange(x.shape[1]) >= 3 * x.shape[1] // 4
        out, weights = self.attention(x, keys, keys, key_padding_mask=padded.expand(x.shape[0], -1),
                                      need_weights=self.need_weights)
        return (out, weights) if self.need_weights else out


class _ConvDecoder(nn.Module):
    """Conv1d over a sequence folded to an image, transposed convolution, nearest and bilinear
    upsampling, pixel shuffle, GroupNorm and InstanceNorm."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Sequential(nn.Conv1d(8, 16, 5, padding=2, dilation=1), nn.GroupNorm(4, 16),
                                    nn.GELU(), nn.Conv1d(16, 16, 3, padding=2, dilation=2, groups=4))
        self.up = nn.Sequential(
            nn.ConvTranspose2d(16, 16, 4, stride=2, padding=1), nn.InstanceNorm2d(16, affine=True),
            nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(16, 32, 3, padding=1),
            nn.PixelShuffle(2), nn.GroupNorm(2, 8), nn.SiLU(),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            nn.Conv2d(8, 4, 3, padding=1))

    def forward(self, x):  # x: [N, 8, 64]
        y = self.conv1d(x)
        return self.up(y.reshape(y.shape[0], 16, 8, 8))


class _NormAxes(nn.Module):
    """LayerNorm over [C, H, W] and over [H, W], a Linear between them on the last axis."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm_chw = nn.LayerNorm([16, 16, 16])
        self.linear = nn.Linear(16, 16)
        self.norm_hw = nn.LayerNorm([16, 16], elementwise_affine=False)

    def forward(self, x):
        y = self.norm_chw(torch.relu(self.conv(x)))
        return self.norm_hw(torch.tanh(self.linear(y)))


class _Bags(nn.Module):
    """Sum and mean bags of embeddings (``nn.EmbeddingBag`` over fixed-size bags) and the same
    by hand (gather, mean over the bag), then an MLP."""

    def __init__(self):
        super().__init__()
        self.sum_bag = nn.EmbeddingBag(300, 32, mode="sum")
        self.mean_bag = nn.EmbeddingBag(300, 32, mode="mean")
        self.embedding = nn.Embedding(300, 32)
        self.mlp = nn.Sequential(nn.Linear(96, 64), nn.ReLU(), nn.Linear(64, 8))

    def forward(self, ids):  # [N, 12]
        by_hand = self.embedding(ids).mean(dim=1)
        return self.mlp(torch.cat([self.sum_bag(ids), self.mean_bag(ids), by_hand], dim=-1))


class _Einsum(nn.Module):
    """Attention and a bilinear map written with einsum."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(32, 96)
        self.bilinear = nn.Parameter(torch.randn(4, 32, 32) / 32 ** 0.5)
        self.out = nn.Linear(128, 16)

    def forward(self, x):  # [N, T, 32]
        q, k, v = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, 4, 8).unbind(2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5
        mixed = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(2)
        forms = torch.einsum("bti,oij,btj->bto", x, self.bilinear, mixed)
        return self.out(torch.cat([mixed, forms.repeat(1, 1, 24)], dim=-1))


def _lstm():
    return _Recurrent(nn.LSTM(16, 32, num_layers=2, bidirectional=True, batch_first=True,
                              proj_size=12, dropout=0.1), 2), (20, 16), 0


MODULES = {
    "lstm_bi_proj": _lstm,
    "gru_bi": lambda: (_Recurrent(nn.GRU(16, 32, num_layers=3, bidirectional=True,
                                         batch_first=True), 1), (20, 16), 0),
    "rnn_tanh": lambda: (_Recurrent(nn.RNN(16, 32, num_layers=2, nonlinearity="tanh"), 1),
                         (20, 16), 0),
    "rnn_relu_bi": lambda: (_Recurrent(nn.RNN(16, 32, num_layers=2, nonlinearity="relu",
                                              bidirectional=True, batch_first=True), 1),
                            (20, 16), 0),
    "transformer_decoder": lambda: (_Decoder(), (16, 32), 0),
    "mha_padding_weights": lambda: (_PaddedAttention(), (16, 32), 0),
    "conv_decoder": lambda: (_ConvDecoder(), (8, 64), 0),
    "layernorm_axes": lambda: (_NormAxes(), (3, 16, 16), 0),
    "embedding_bags": lambda: (_Bags(), (12,), 300),
    "einsum": lambda: (_Einsum(), (16, 32), 0),
}
