"""``check`` on cells stepped by a Python loop from zero states (findings/variance._constant_part).

PyTorch's export of ``nn.LSTMCell``s stepped by a Python loop from ``torch.zeros`` states
writes the first step's ``f_0 * c_0`` with a ``ConstantOfShape`` zero ``c_0``: a tensor of no
signal variance by construction, added to ``i_0 g_0`` in ``c_1``. On two stacked cells ``check``
failed the model with "vanishing-variance ... falls to 0x" at the second cell's ``f_0 c_0``
(2 stacked cells of 128 over 32 steps; of 16 over 8 steps here). A chain without signal
variance that rejoins the main path in a sum whose output is not flagged is a zero term of the
sum, not a dead signal; a network whose signal dies still fails
(tests/test_check_class_token.py)."""

from __future__ import annotations

import pytest

from onnxinit import check
from onnxinit.analysis import analyze
from tests.real.exports import export_module

torch = pytest.importorskip("torch")


class _CellStack(torch.nn.Module):
    def __init__(self, features: int = 16, hidden: int = 16):
        super().__init__()
        self.hidden = hidden
        self.cells = torch.nn.ModuleList(
            [torch.nn.LSTMCell(features, hidden), torch.nn.LSTMCell(hidden, hidden)])
        self.head = torch.nn.Linear(hidden, 4)

    def forward(self, x):
        hs = [torch.zeros(x.shape[0], self.hidden) for _ in self.cells]
        cs = [torch.zeros(x.shape[0], self.hidden) for _ in self.cells]
        for t in range(x.shape[1]):
            inp = x[:, t]
            for i, cell in enumerate(self.cells):
                hs[i], cs[i] = cell(inp, (hs[i], cs[i]))
                inp = hs[i]
        return self.head(hs[-1])


def test_zero_states_of_stacked_cells_in_a_loop_are_not_a_vanishing_signal(tmp_path):
    torch.manual_seed(0)
    path = export_module(_CellStack(), (8, 16), tmp_path / "cells.onnx")
    findings = check.find(analyze(path, batch_size=8))
    assert not check.failed(findings), [f.message for f in findings]
