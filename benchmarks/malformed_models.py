"""Malformed and mutated models through every command: no traceback, no hang, ever.

Each case loads one of ``--models`` (default: the sample models), applies one or two random
mutations to its graph and, for about one case in seven, flips random bytes of the serialized
file. Half the mutations are stop 37's (a node deleted, duplicated or fed another tensor; an
initializer deleted, truncated, retyped, emptied or given a NaN/inf/1e38; the graph's input or
output renamed or dropped; an attribute set to 0, -1, 7, 100 or NaN; a cycle; another opset;
every node removed), half stop 43's structural ones (``malformed_mutations.py``: value_info
contradicting shapes, extreme input dims and element types, bad Reshape/Expand shapes, Conv
channels and groups, Gemm transposes, Concat ranks, attributes of the wrong type, empty and
duplicate names, local functions, ai.onnx.ml and com.microsoft ops, If/Loop misuse, external
data outside the folder, huge metadata, outputs that are inputs or initializers); ``--kinds``
picks one family. Each case then runs ``analyze`` and ``check`` and, in turn, one of
``rescale --method autoinit``, ``export-weights``, ``report`` and ``analyze --backward``
(``--extra all``: every one) through the CLI's entry point, in a forked child under an alarm
(a run past ``--timeout`` is a hang; the child is killed if native code ignores the alarm),
with what native code writes to the file descriptors captured too. The contract: exit 0 or 1
with no nan or inf printed, or exit 2 with one line ``onnxinit: error: ...`` (not an internal
error), nothing on stdout and no file left behind. The script prints each kind of broken
contract once with the cases that broke it and exits 1.

    python benchmarks/malformed_models.py                       # 100 cases, seed 0
    python benchmarks/malformed_models.py --count 500 --seed 3 --models a.onnx,b.onnx
    python benchmarks/malformed_models.py --kinds new --extra all --keep /tmp/broken
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxinit.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from malformed_mutations import MUTATIONS  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "sample_models"


def _set_initializer(graph, index: int, array: np.ndarray) -> None:
    name = graph.initializer[index].name
    graph.initializer[index].CopyFrom(numpy_helper.from_array(array, name))


def mutate(model: onnx.ModelProto, rng: random.Random, kinds: str = "all") -> str:
    """Apply one random mutation to ``model`` in place; returns its name. ``kinds``: "old"
    (stop 37's, below), "new" (stop 43's, :mod:`malformed_mutations`) or "all" (either, each
    half the time)."""
    if kinds == "new" or (kinds == "all" and rng.random() < 0.5):
        names = sorted(MUTATIONS)
        for _ in range(8):  # a mutation the model has something for (a Conv, a Reshape, ...)
            name = rng.choice(names)
            if MUTATIONS[name](model, rng):
                return name
        return "none"
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


# the commands each case runs: analyze and check always, then EXTRA in turn (one per case, or
# every one with --extra all); DIR is the case's folder, where a written file goes
BASE = (["analyze", "{model}", "--batch-size", "4"], ["check", "{model}"])
EXTRA = (["rescale", "{model}", "--method", "autoinit", "-o", "{dir}/out.onnx"],
         ["export-weights", "{model}", "-o", "{dir}/w.safetensors"],
         ["report", "{model}", "-o", "{dir}/r.html", "--batch-size", "4"],
         ["analyze", "{model}", "--batch-size", "4", "--backward"])


class _Timeout(BaseException):
    """Raised by the alarm in a run past --timeout (a BaseException: no ``except Exception``
    of the code under test swallows it)."""


def _on_alarm(signum, frame):
    raise _Timeout


def _run_in_process(argv: list[str], timeout: int) -> dict:
    """Run the CLI in this process under an alarm: exit status (or the traceback), stdout,
    stderr."""
    out, err = io.StringIO(), io.StringIO()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            cli_main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _Timeout:
        code = f"hang: still running after {timeout} s"
    except Exception:  # the crash this script looks for
        code = traceback.format_exc()
    finally:
        signal.alarm(0)
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}


def run_cli(argv: list[str], timeout: int) -> dict:
    """:func:`_run_in_process` in a forked child, which is killed when it outlives the alarm
    (a loop in native code, where the alarm's exception is never raised): the child's
    crash, exit or hang is this run's, never the script's."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        # what native code (onnxruntime's logger) writes to the descriptors is the user's too
        native = [tempfile.TemporaryFile() for _ in range(2)]
        for fd, file in zip((1, 2), native):
            os.dup2(file.fileno(), fd)
        try:
            result = _run_in_process(argv, timeout)
        except BaseException as exc:  # noqa: BLE001 - anything: report it, never unwind
            result = {"code": f"{type(exc).__name__}: {exc}", "out": "", "err": ""}
        for key, file in zip(("out", "err"), native):
            file.seek(0)
            result[key] += file.read().decode("utf-8", "replace")
        with os.fdopen(write, "w") as pipe:
            json.dump(result, pipe)
        os._exit(0)
    os.close(write)
    data, deadline = b"", time.monotonic() + timeout + 20
    while True:
        ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read)
            return {"code": f"hang: killed after {timeout + 20} s", "out": "", "err": ""}
        chunk = os.read(read, 1 << 20)
        if not chunk:
            break
        data += chunk
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if not data:
        return {"code": f"child died (status {status})", "out": "", "err": ""}
    return json.loads(data)


def verdict(result: dict, left: set) -> str | None:
    """None when the run ended in a contracted way, else what broke the contract: exit 0 or 1
    with no nan or inf printed, or exit 2 with one line ``onnxinit: error: ...`` (not an
    internal error), nothing on stdout and no file left behind."""
    code, out, err = result["code"], result["out"], result["err"]
    if isinstance(code, str):
        return code.strip().splitlines()[-1][:160] if code.strip() else "crash"
    if code == 2:
        lines = err.strip().splitlines()
        if out:
            return "exit 2 with output on stdout"
        if len(lines) != 1 or not lines[0].startswith("onnxinit: error:"):
            return "exit 2 without one line 'onnxinit: error: ...': " + (lines or [""])[-1][:100]
        if "internal error" in err:
            return "internal error: " + lines[0][:120]
        if left:
            return "exit 2 left a file behind"
        return None
    if code not in (0, 1):
        return f"exit {code}"
    words = out.lower().replace("info", "").split()
    if "nan" in words or "inf" in words or "-inf" in words:
        return "nan or inf printed"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated ONNX files (default: the samples)")
    parser.add_argument("--count", type=int, default=100, help="mutated models to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kinds", choices=["all", "old", "new"], default="all",
                        help="mutations: stop 37's (old), stop 43's structural ones (new), both")
    parser.add_argument("--extra", choices=["one", "all", "none"], default="one",
                        help="besides analyze and check: one of rescale, export-weights, "
                             "report, analyze --backward per case in turn, all, or none")
    parser.add_argument("--timeout", type=int, default=120,
                        help="seconds a run may take before it counts as a hang")
    parser.add_argument("--keep", metavar="DIR",
                        help="copy the file of each case that broke the contract to DIR")
    args = parser.parse_args()
    models = (args.models.split(",") if args.models
              else sorted(str(p) for p in SAMPLES.glob("*.onnx")))
    rng = random.Random(args.seed)
    outcomes, crashes = Counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in range(args.count):
            source = rng.choice(models)
            model = onnx.load(source)
            kinds = [mutate(model, rng, args.kinds) for _ in range(rng.choice([1, 1, 2]))]
            data = bytearray(model.SerializeToString())
            if rng.random() < 0.15:
                for _ in range(5):
                    data[rng.randrange(len(data))] = rng.randrange(256)
                kinds.append("bytes")
            folder = Path(tmp) / f"case{case}"
            folder.mkdir()
            path = folder / "model.onnx"
            path.write_bytes(bytes(data))
            del data, model
            extra = {"one": [EXTRA[case % len(EXTRA)]], "all": list(EXTRA),
                     "none": []}[args.extra]
            lasts = []
            for command in (*BASE, *extra):
                argv = [a.format(model=path, dir=folder) for a in command]
                before = set(folder.rglob("*"))
                result = run_cli(argv, args.timeout)
                left = set(folder.rglob("*")) - before
                broken = verdict(result, left)
                for written in left:  # the next command starts from the same folder
                    written.unlink()
                name = " ".join(command[:1] + [a for a in command if a == "--backward"])
                if broken is not None:
                    if args.keep:
                        Path(args.keep).mkdir(parents=True, exist_ok=True)
                        shutil.copy(path, Path(args.keep) / f"case{case}.onnx")
                    crashes.setdefault(broken, []).append((case, name, Path(source).name,
                                                           kinds))
                    outcomes[(name, "crash")] += 1
                else:
                    outcomes[(name, f"exit {result['code']}")] += 1
                lines = result["err"].strip().splitlines()
                lasts.append(f"{name[:7]} {result['code'] if broken is None else 'CRASH'}")
                if broken is None and lines and result["code"] == 2:
                    lasts[-1] += ": " + lines[-1].replace(str(path), "M")[17:80]
            shutil.rmtree(folder)
            print(f"{case:4d} {Path(source).name:24s} {'+'.join(kinds):40s} {'; '.join(lasts)}",
                  flush=True)
    total = Counter()
    for (name, outcome), n in outcomes.items():
        total[outcome] += n
    print(f"\n{args.count} cases, {sum(outcomes.values())} runs:",
          ", ".join(f"{k} {v}" for k, v in sorted(total.items())))
    for name in sorted({n for n, _ in outcomes}):
        print(f"  {name}: " + ", ".join(f"{o} {v}" for (n, o), v in sorted(outcomes.items())
                                        if n == name))
    for key, where in crashes.items():
        print(f"CRASH {key}\n  {len(where)} runs, e.g. {where[:3]}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
