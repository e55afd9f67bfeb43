"""Model preparations: the one place where a model is given static shapes, constant-folded,
and given training semantics. ModelGraph, measurement, LSUV and the autodiff's lowering all
use these passes; each declares whether it edits its input (see :mod:`.base`).

============================  ========  ===================================================
pass                          in place  what it does
============================  ========  ===================================================
``set_input_shapes``          yes       concrete dims for the graph inputs
``infer_shapes``              no        shape inference, declared value_info kept
``infer_with_constants``      no        shape inference seeing folded constants' values
``types_and_shapes``          no        element types and shapes by inference
``fold_constants``            no        nodes computable from constants -> initializers
``static_control``            no        constant-condition If inlined, split Loops unrolled
``inference_batchnorms``      no        BatchNormalization written as arithmetic -> node
``nearest_repeats``           no        Unsqueeze -> Tile -> Reshape repeats -> nearest Resize
``channels_first``            no        channels-last stretches between Transposes -> NCHW
``batch_statistics``          yes       BatchNormalization on the batch's statistics
``fixed_dropout``             yes       Dropout as identity (or a fixed seeded mask)
``with_outputs``              no        intermediate tensors as graph outputs
``measured_shapes``           no        shapes from one onnxruntime run (the fallback)
============================  ========  ===================================================
"""

from __future__ import annotations

from .base import PASSES, PassInfo, model_pass
from .channels_first import channels_first
from .emitter import GraphEmitter
from .folding import (
    MAX_FOLDED_ELEMENTS,
    NEVER_FOLDED,
    RANDOM_OPS,
    evaluate_node,
    fold_constants,
    shape_op_value,
)
from .inference_batchnorm import ModelReading, inference_batchnorms
from .measuring import measured_shapes, with_outputs
from .repeats import nearest_repeats
from .static_control import endless_loop, static_control
from .folded_inference import FoldedInference, infer_with_constants
from .shapes import (
    SMALL_TENSOR,
    DeclaredMerge,
    described,
    infer_shapes,
    is_static,
    keep_declared,
    set_input_shapes,
    shape_of,
    types_and_shapes,
    value_info,
)
from .training import batch_statistics, fixed_dropout, training_semantics

__all__ = [
    "MAX_FOLDED_ELEMENTS", "NEVER_FOLDED", "PASSES", "RANDOM_OPS", "SMALL_TENSOR", "DeclaredMerge",
    "FoldedInference", "ModelReading",
    "GraphEmitter", "PassInfo", "batch_statistics", "described", "channels_first", "endless_loop", "evaluate_node", "fixed_dropout", "fold_constants", "training_semantics",
    "inference_batchnorms", "infer_shapes", "infer_with_constants", "is_static", "keep_declared", "measured_shapes",
    "model_pass", "nearest_repeats", "set_input_shapes", "shape_of", "shape_op_value",
    "static_control", "types_and_shapes", "value_info", "with_outputs",
]
