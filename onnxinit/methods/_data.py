"""Options shared by data-driven methods: every one (lsuv, gradinit, metainit, nio) inherits
:class:`DataOptions` (``--data``); those that compute a loss (gradinit, metainit, nio) inherit
:class:`LossOptions` (``--loss``, ``--loss-output``) — LSUV runs forward passes only, so it takes
no loss and needs no labels in ``--data``.

``rescale``'s ``-o/--output`` is the output *file*; the model output the loss applies to is
``--loss-output``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..data import LOSSES, DataSource, data_source
from ..graph import ModelGraph
from .options import option


@dataclass
class DataOptions:
    data: str | None = option(
        None,
        "data-driven methods: .npz file with an array per graph input (samples on axis 0) "
        "plus, for a loss, 'labels' (cross_entropy) or 'targets' (mse). Default: synthetic "
        "random data.",
        metavar="FILE.npz",
    )
    # whether the method fits the data it sees (then real data is worth a notice when absent);
    # MetaInit is task-agnostic by design
    fits_data: ClassVar[bool] = True


@dataclass
class LossOptions(DataOptions):
    loss: str = option(
        "cross_entropy",
        "gradinit, metainit, nio: loss on the model output: softmax cross-entropy against "
        "integer labels, mse against float targets, or 'output' (the output already is the "
        "loss).",
        choices=LOSSES,
    )
    loss_output: str | None = option(
        None, "gradinit, metainit, nio: model output the loss applies to (default: first float "
              "output).", metavar="NAME",
    )


def graph_batch_size(graph: ModelGraph) -> int:
    """The batch size the graph's inputs resolved to: axis 0 of the first input's shape (a fixed
    batch the model declares, ``--input-shape``, or else ``--batch-size``)."""
    for name in graph.input_names:
        shape = graph.input_shapes.get(name)
        if shape:
            return int(shape[0])
    return graph.batch_size


def batches(graph: ModelGraph, options: DataOptions, *, batch_size: int | None = None,
            seed: int | None = None) -> DataSource:
    """The DataSource a method draws from (batch size: the graph's resolved one unless given;
    seed: the options' ``seed`` field, 0 if none; no labels for options without a loss)."""
    loss = options if isinstance(options, LossOptions) else None
    return data_source(
        graph, options.data,
        batch_size=batch_size if batch_size is not None else graph_batch_size(graph),
        seed=seed if seed is not None else getattr(options, "seed", 0),
        loss=loss.loss if loss else "output", loss_output=loss.loss_output if loss else None,
        notice=options.fits_data,
    )
