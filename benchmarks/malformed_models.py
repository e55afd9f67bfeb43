"""Malformed and mutated models through ``analyze`` and ``check``: no traceback, ever.

Each case loads one of ``--models`` (default: the sample models), applies one or two random
mutations to its graph (a node deleted, duplicated or fed another tensor; an initializer
deleted, truncated, retyped, emptied or given a NaN/inf/1e38; the graph's input or output
renamed or dropped; an attribute set to 0, -1, 7, 100 or NaN; a cycle; another opset; every
node removed) and, for about one case in seven, flips random bytes of the serialized file,
then runs ``onnxinit analyze`` and ``onnxinit check`` on it in-process through the CLI's entry
point. Each run must end in one of the CLI's contracted ways: exit 0 (analysed, or passed),
exit 1 (findings), exit 2 (one line saying what is wrong). Any other exception is a crash;
the script prints each kind of crash once with the cases that raised it and exits 1.

    python benchmarks/malformed_models.py                       # 100 cases, seed 0
    python benchmarks/malformed_models.py --count 500 --seed 3 --models a.onnx,b.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import random
import sys
import tempfile
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxinit.cli import main as cli_main

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _set_initializer(graph, index: int, array: np.ndarray) -> None:
    name = graph.initializer[index].name
    graph.initializer[index].CopyFrom(numpy_helper.from_array(array, name))


def mutate(model: onnx.ModelProto, rng: random.Random) -> str:
    """Apply one random mutation to ``model`` in place; returns its name."""
    g = model.graph
    kind = rng.choice(["del_node", "swap_input", "del_init", "short_init", "retype_init",
                       "rename_output", "attribute", "dup_node", "del_input", "input_dim",
                       "bad_value", "cycle", "opset", "no_nodes", "empty_init"])
    inits = len(g.initializer)
    if kind == "del_node" and g.node:
        del g.node[rng.randrange(len(g.node))]
    elif kind == "swap_input" and g.node:
        node = rng.choice(g.node)
        names = [o for n in g.node for o in n.output] + [i.name for i in g.initializer]
        if node.input:
            node.input[rng.randrange(len(node.input))] = rng.choice(names)
    elif kind == "del_init" and inits:
        del g.initializer[rng.randrange(inits)]
    elif kind == "short_init" and inits:
        i = rng.randrange(inits)
        a = numpy_helper.to_array(g.initializer[i]).reshape(-1)
        _set_initializer(g, i, a[: max(1, a.size // 2)])
    elif kind == "retype_init" and inits:
        i = rng.randrange(inits)
        dtype = rng.choice([np.float16, np.float64, np.int64, np.int32])
        _set_initializer(g, i, numpy_helper.to_array(g.initializer[i]).astype(dtype))
    elif kind == "rename_output" and g.output:
        g.output[0].name = "nonexistent"
    elif kind == "attribute" and g.node:
        attrs = rng.choice(g.node).attribute
        if attrs:
            a = rng.choice(attrs)
            if a.type == onnx.AttributeProto.INTS and a.ints:
                a.ints[rng.randrange(len(a.ints))] = rng.choice([0, -1, 7, 100])
            elif a.type == onnx.AttributeProto.INT:
                a.i = rng.choice([0, -1, 7, 100])
            elif a.type == onnx.AttributeProto.FLOAT:
                a.f = rng.choice([0.0, -1.0, float("nan"), 1e30])
    elif kind == "dup_node" and g.node:
        g.node.append(copy.deepcopy(rng.choice(g.node)))
    elif kind == "del_input" and g.input:
        del g.input[0]
    elif kind == "input_dim" and g.input:
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            dims[rng.randrange(len(dims))].dim_value = rng.choice([0, 1, 3, 1000])
    elif kind == "bad_value" and inits:
        i = rng.randrange(inits)
        a = numpy_helper.to_array(g.initializer[i]).copy()
        if a.dtype.kind == "f" and a.size:
            a.reshape(-1)[0] = rng.choice([np.nan, np.inf, 1e38])
            _set_initializer(g, i, a)
    elif kind == "cycle" and len(g.node) > 2:
        a, b = sorted(rng.sample(range(len(g.node)), 2))
        g.node[a].input.append(g.node[b].output[0])
    elif kind == "opset":
        model.opset_import[0].version = rng.choice([1, 5, 9, 30])
    elif kind == "no_nodes":
        del g.node[:]
    elif kind == "empty_init" and inits:
        i = rng.randrange(inits)
        a = numpy_helper.to_array(g.initializer[i])
        _set_initializer(g, i, np.zeros((0,) + a.shape[1:], a.dtype))
    return kind


def run_cli(argv: list[str]) -> tuple[object, str]:
    """(exit status, or the exception's traceback as a string) and stderr's last line."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            cli_main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    except Exception:  # the crash this script looks for
        code = traceback.format_exc()
    lines = err.getvalue().strip().splitlines()
    return code, lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated ONNX files (default: the samples)")
    parser.add_argument("--count", type=int, default=100, help="mutated models to try")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    models = (args.models.split(",") if args.models
              else sorted(str(p) for p in SAMPLES.glob("*.onnx")))
    rng = random.Random(args.seed)
    outcomes, crashes = Counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(args.count):
            source = rng.choice(models)
            model = onnx.load(source)
            kinds = [mutate(model, rng) for _ in range(rng.choice([1, 1, 2]))]
            data = bytearray(model.SerializeToString())
            if rng.random() < 0.15:
                for _ in range(5):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                kinds.append("bytes")
            path = Path(tmp) / f"case{case}.onnx"
            path.write_bytes(bytes(data))
            for command in (["analyze", str(path), "-q", "--batch-size", "4"],
                            ["check", str(path), "-q"]):
                code, last = run_cli(command)
                if isinstance(code, str):
                    key = code.strip().splitlines()[-1][:160]
                    crashes.setdefault(key, []).append((case, command[0], Path(source).name,
                                                        kinds))
                    outcomes["crash"] += 1
                else:
                    outcomes[f"exit {code}"] += 1
            print(f"{case:4d} {Path(source).name:24s} {'+'.join(kinds):28s} {last[:90]}",
                  flush=True)
    print(f"\n{args.count} cases, {sum(outcomes.values())} runs:",
          ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    for key, where in crashes.items():
        print(f"CRASH {key}\n  in {where[:3]}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
