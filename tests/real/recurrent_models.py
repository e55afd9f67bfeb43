"""More recurrent networks for tests/real/sequence.py (``RECURRENT_MORE``, docs/recurrent.md's
second table): PyTorch cells unrolled by a Python loop, a GRU encoder-decoder with teacher
forcing, attention pooling over an LSTM's steps, an LSTM language model (tied weights or
not), a GRU over Conv1d features. Each builder returns the torch module (random
initialization), built by tests/real/sequence.export under torch's seed 0."""

from __future__ import annotations


def cell_loop(kind: str, features: int = 64, hidden: int = 128):
    """``nn.LSTMCell``/``GRUCell``/``RNNCell`` stepped by a Python loop over the steps (the
    export unrolls it) and a Linear(10) on the last state."""

    def build():
        import torch
        from torch import nn

        class CellLoop(nn.Module):
            def __init__(self):
                super().__init__()
                self.cell = getattr(nn, kind)(features, hidden)
                self.head = nn.Linear(hidden, 10)

            def forward(self, x):
                h = torch.zeros(x.shape[0], hidden)
                c = torch.zeros(x.shape[0], hidden)
                for t in range(x.shape[1]):
                    if kind == "LSTMCell":
                        h, c = self.cell(x[:, t], (h, c))
                    else:
                        h = self.cell(x[:, t], h)
                return self.head(h)

        return CellLoop()

    return build


def seq2seq(vocab: int = 0, features: int = 64, hidden: int = 128, source: int = 16):
    """A GRU encoder over the first ``source`` steps, a GRU decoder over the rest (teacher
    forcing: the target sequence is its input) from the encoder's final state, a Linear on every
    decoder step (``vocab`` > 0: token ids, an Embedding shared by both and a vocabulary
    projection)."""

    def build():
        from torch import nn

        class Seq2Seq(nn.Module):
            def __init__(self):
                super().__init__()
                width = 128 if vocab else features
                self.embed = nn.Embedding(vocab, width) if vocab else nn.Identity()
                self.encoder = nn.GRU(width, hidden, batch_first=True)
                self.decoder = nn.GRU(width, hidden, batch_first=True)
                self.out = nn.Linear(hidden, vocab or 32)

            def forward(self, x):
                _, state = self.encoder(self.embed(x[:, :source]))
                y, _ = self.decoder(self.embed(x[:, source:]), state)
                return self.out(y)

        return Seq2Seq()

    return build


def attention_pool(features: int = 64, hidden: int = 128, bidirectional: bool = False):
    """LSTM, a score per step (Linear(1)), softmax over the steps, the weighted sum of the steps
    and a Linear(10) on it."""

    def build():
        import torch
        from torch import nn

        width = hidden * (2 if bidirectional else 1)

        class AttentionPool(nn.Module):
            def __init__(self):
                super().__init__()
                self.rnn = nn.LSTM(features, hidden, batch_first=True,
                                   bidirectional=bidirectional)
                self.score = nn.Linear(width, 1)
                self.head = nn.Linear(width, 10)

            def forward(self, x):
                out, _ = self.rnn(x)
                weights = torch.softmax(self.score(out), dim=1)
                return self.head((weights * out).sum(1))

        return AttentionPool()

    return build


def language_model(vocab: int = 1000, hidden: int = 128, layers: int = 2, tied: bool = False):
    """Embedding, an LSTM, a vocabulary projection on every step (``tied``: the Embedding's
    weights)."""

    def build():
        from torch import nn

        class LanguageModel(nn.Module):
            def __init__(self):
                super().__init__()
                self.embed = nn.Embedding(vocab, hidden)
                self.rnn = nn.LSTM(hidden, hidden, layers, batch_first=True)
                self.out = nn.Linear(hidden, vocab)
                if tied:
                    self.out.weight = self.embed.weight

            def forward(self, ids):
                y, _ = self.rnn(self.embed(ids))
                return self.out(y)

        return LanguageModel()

    return build


def conv_gru(features: int = 64, channels: int = 128, hidden: int = 128):
    """Conv1d(k=3) and ReLU over the steps, a GRU on its features, a Linear(10) on the last
    step."""

    def build():
        import torch
        from torch import nn

        class ConvGRU(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv1d(features, channels, 3, padding=1)
                self.rnn = nn.GRU(channels, hidden, batch_first=True)
                self.head = nn.Linear(hidden, 10)

            def forward(self, x):
                z = torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)
                out, _ = self.rnn(z)
                return self.head(out[:, -1])

        return ConvGRU()

    return build
