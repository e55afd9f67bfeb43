"""How fast is `check` over a model zoo: one process, `--jobs 2`, `--ray` on a local instance?

Generates a zoo with onnx.helper (no framework): small models (an MLP, a CNN, a residual CNN and
an attention block, a few layers of width 16-32, tens of KB) and medium ones (the same
architectures 10-16 layers deep and 128-512 wide, 1-12 MB). Then, for each engine and each size
class, runs ``onnxinit.batch.check_many`` over the models and prints wall time, throughput
(models/s), the speed-up over one process measured in the same run, and CPU seconds (this
process and its descendants: worker processes, the forkserver, Ray's workers).

The per-task overhead of an engine is measured with a work function that does nothing, over
the small zoo: (wall time) / (models). Engine start-up (the forkserver importing onnxinit; Ray
starting its processes and workers importing onnxinit) is timed on its own and left out of the
throughput; it is paid once per run.

    python benchmarks/many_models.py                      # 200 small + 20 medium, all engines
    python benchmarks/many_models.py --small 40 --medium 6 --engines sequential,jobs2
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxinit.batch import check_many, in_order, run_many

OPSET, IR_VERSION = 17, 8


def _init(rng, shape, fan_in, name, inits, gain=2.0):
    w = rng.standard_normal(shape) * np.sqrt(gain * rng.uniform(0.5, 1.5) / fan_in)
    inits.append(numpy_helper.from_array(w.astype(np.float32), name))
    return name


def _model(nodes, inits, inputs, output, shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "zoo", inputs,
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)],
                              inits)
    return helper.make_model(graph, ir_version=IR_VERSION,
                             opset_imports=[helper.make_opsetid("", OPSET)])


def mlp(rng, depth, width) -> onnx.ModelProto:
    nodes, inits, x = [], [], "x"
    act = rng.choice(["Relu", "Tanh"])
    for i in range(depth):
        w = _init(rng, (width, width), width, f"fc{i}.w", inits)
        nodes.append(helper.make_node("Gemm", [x, w], [f"h{i}"], transB=1))
        nodes.append(helper.make_node(act, [f"h{i}"], [f"a{i}"]))
        x = f"a{i}"
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                               ["N", width])], x, ["N", width])


def _conv(nodes, inits, rng, x, c_in, c_out, name):
    w = _init(rng, (c_out, c_in, 3, 3), c_in * 9, f"{name}.w", inits)
    nodes.append(helper.make_node("Conv", [x, w], [f"{name}.c"], pads=[1, 1, 1, 1]))
    return f"{name}.c"


def cnn(rng, depth, channels, hw, residual) -> onnx.ModelProto:
    nodes, inits = [], []
    x = _conv(nodes, inits, rng, "x", 3, channels, "stem")
    for i in range(depth):
        h = _conv(nodes, inits, rng, x, channels, channels, f"b{i}")
        nodes.append(helper.make_node("Relu", [h], [f"b{i}.r"]))
        h = f"b{i}.r"
        if residual:
            nodes.append(helper.make_node("Add", [h, x], [f"b{i}.add"]))
            h = f"b{i}.add"
        x = h
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    w = _init(rng, (10, channels), channels, "fc.w", inits, gain=1.0)
    nodes.append(helper.make_node("Gemm", ["flat", w], ["logits"], transB=1))
    return _model(nodes, inits, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, hw, hw])], "logits", ["N", 10])


def attention(rng, depth, dim, tokens) -> onnx.ModelProto:
    nodes, inits, x = [], [], "x"
    scale = numpy_helper.from_array(np.array(1 / np.sqrt(dim), np.float32), "scale")
    inits.append(scale)
    for i in range(depth):
        q, k, v, o = (_init(rng, (dim, dim), dim, f"l{i}.{n}", inits, gain=1.0) for n in "qkvo")
        p = f"l{i}"
        nodes += [helper.make_node("MatMul", [x, q], [f"{p}.q"]),
                  helper.make_node("MatMul", [x, k], [f"{p}.k"]),
                  helper.make_node("MatMul", [x, v], [f"{p}.v"]),
                  helper.make_node("Transpose", [f"{p}.k"], [f"{p}.kt"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", [f"{p}.q", f"{p}.kt"], [f"{p}.s"]),
                  helper.make_node("Mul", [f"{p}.s", "scale"], [f"{p}.ss"]),
                  helper.make_node("Softmax", [f"{p}.ss"], [f"{p}.a"], axis=-1),
                  helper.make_node("MatMul", [f"{p}.a", f"{p}.v"], [f"{p}.av"]),
                  helper.make_node("MatMul", [f"{p}.av", o], [f"{p}.o"]),
                  helper.make_node("Add", [x, f"{p}.o"], [f"{p}.out"])]
        x = f"{p}.out"
    return _model(nodes, inits, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", tokens, dim])], x, ["N", tokens, dim])


def make_zoo(folder: Path, small: int, medium: int, seed: int = 0) -> dict[str, list[str]]:
    """``{"small": paths, "medium": paths}``, architectures in turn."""
    rng = np.random.default_rng(seed)
    sizes = {
        "small": lambda k: [mlp(rng, int(rng.integers(2, 6)), 32),
                            cnn(rng, int(rng.integers(1, 4)), 8, 16, False),
                            cnn(rng, int(rng.integers(1, 4)), 8, 16, True),
                            attention(rng, int(rng.integers(1, 3)), 16, 8)][k % 4],
        "medium": lambda k: [mlp(rng, 16, 512), cnn(rng, 12, 128, 32, False),
                             cnn(rng, 12, 128, 32, True), attention(rng, 10, 256, 64)][k % 4],
    }
    zoo = {}
    for size, count in (("small", small), ("medium", medium)):
        (folder / size).mkdir(parents=True, exist_ok=True)
        zoo[size] = []
        for k in range(count):
            path = folder / size / f"{size}_{k:04d}.onnx"
            onnx.save(sizes[size](k), str(path))
            zoo[size].append(str(path))
    return zoo


def nothing(path: str, options: dict) -> dict:
    """The work of the overhead measurement."""
    return {}


def cpu_seconds() -> float:
    """CPU time of this process and all its descendants, live or reaped (psutil when there;
    else this process and its reaped children)."""
    try:
        import psutil
    except ImportError:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            c = proc.cpu_times()
            total += c.user + c.system + (c.children_user + c.children_system
                                          if proc is me else 0.0)
        except psutil.Error:
            pass
    return total


ENGINES = {"sequential": {}, "jobs2": {"jobs": 2}, "ray": {"ray": True}}


def _measure(fn) -> tuple[float, float, list]:
    cpu, wall = cpu_seconds(), time.perf_counter()
    results = fn()
    return time.perf_counter() - wall, cpu_seconds() - cpu, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--medium", type=int, default=20)
    parser.add_argument("--engines", default="sequential,jobs2,ray")
    args = parser.parse_args()
    engines = args.engines.split(",")
    logging.getLogger("onnxinit").setLevel(logging.ERROR)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        zoo = make_zoo(Path(tmp), args.small, args.medium)
        for size, paths in zoo.items():
            mb = [os.path.getsize(p) / 1e6 for p in paths]
            print(f"{size}: {len(paths)} models, {np.mean(mb):.3f} MB each on average "
                  f"({min(mb):.3f}-{max(mb):.3f})")
        warm = zoo["small"][:1]
        in_order(check_many(warm))  # rules and imports loaded in this process too
        rows = []
        for engine in engines:
            options = ENGINES[engine]
            ray_module = None
            start = time.perf_counter()
            if engine == "ray":
                import ray

                ray.init(num_cpus=os.cpu_count(), object_store_memory=200 * 1024**2,
                         include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR)
                ray_module = ray
            in_order(check_many(warm * 2, **options))  # workers started and warm
            startup = time.perf_counter() - start
            overhead, _, _ = _measure(lambda: in_order(run_many(zoo["small"], nothing,
                                                                **options)))
            for size, paths in zoo.items():
                wall, cpu, results = _measure(lambda: in_order(check_many(paths, **options)))
                statuses = {s: sum(r.status == s for r in results)
                            for s in {r.status for r in results}}
                rows.append((engine, size, len(paths), wall, cpu, statuses,
                             overhead / len(zoo["small"]), startup))
            if ray_module is not None:
                ray_module.shutdown()
        base = {size: wall for engine, size, _, wall, *_ in rows if engine == "sequential"}
        print(f"\n{'engine':<11} {'size':<7} {'models':>6} {'wall s':>8} {'models/s':>9} "
              f"{'speed-up':>8} {'CPU s':>8} {'overhead/model':>14} {'start-up s':>10}")
        for engine, size, n, wall, cpu, statuses, per_task, startup in rows:
            speedup = f"{base[size] / wall:.2f}x" if size in base else "-"
            print(f"{engine:<11} {size:<7} {n:>6} {wall:>8.2f} {n / wall:>9.2f} {speedup:>8} "
                  f"{cpu:>8.2f} {per_task * 1e3:>11.1f} ms {startup:>10.1f}   {statuses}")
        print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
