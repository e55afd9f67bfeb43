"""How fast is onnxinit, as a user meets it: whole processes started from the shell.

Every figure is the best of ``--repeat`` runs (2) of a fresh process, as wall clock and as CPU
time (user + system of the child, from ``resource.getrusage``): on a shared machine the wall
clock also counts the time other processes held the cores, the CPU time does not. Measured:

- ``onnxinit --version`` (start-up), against ``python -c pass`` in the same run;
- ``analyze`` and ``rescale --method autoinit`` on a pre-activation ResNet-164 without
  BatchNormalization in the layout of a tf2onnx export of the Keras model (benchmarks/zoo.py),
  on a 10,000-node chain, and on GPT-2 (12 layers), BERT-base, ViT-B/16, MobileNetV3-small,
  Swin-T and EfficientNet-B0 exported with PyTorch in training mode (skipped with a message
  when torch, torchvision or transformers is missing); each against a reference process timed
  in the same run: onnxruntime creating a session for the model and running one forward pass
  at batch 1, started the same way;
- per model, the CPU seconds of each phase in a fresh process: imports, load (read, shape
  inference, folding) and propagation (``phases``: where a command's time goes);
- three scaling series, the chain at 1,250 to 20,000 nodes and the ResNet at 2 to 36 blocks
  per stage: the CPU seconds of ``onnxinit.analyze`` itself (imports excluded, measured inside
  a fresh process), and a chain of 250 to 4,000 Gemm layers with biases: the CPU seconds of
  ``rescale --method autoinit --keep-bias``; and the slope of log(seconds) against log(nodes), which must be at most 1.1
  (linear cost).

Each row ends with issue 11's target for it where there is one (``TARGETS``) and whether the
wall clock meets it (or only the CPU time: on a shared machine the wall clock also counts other
processes).

    python benchmarks/analyze_speed.py                      # everything (exports: minutes)
    python benchmarks/analyze_speed.py --models resnet164,chain10k --repeat 5
    python benchmarks/analyze_speed.py --cache /tmp/onnxinit-models   # keep the exports
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import zoo  # the benchmark's models, beside this file

ROOT = HERE.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
# measured as an installed package runs, with bytecode caches: under PYTHONDONTWRITEBYTECODE=1
# a checkout without them compiles onnxinit's modules from source in every process (+0.3-0.4 s
# of CPU per command, measured 0.56-0.64 -> 0.92-0.97 s for the imports of `analyze`)
ENV.pop("PYTHONDONTWRITEBYTECODE", None)
CLI = [sys.executable, "-m", "onnxinit"]

# a process that creates an onnxruntime session for argv[1] and runs it once at batch 1
_REFERENCE = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feeds = {}
for i in session.get_inputs():
    shape = [d if isinstance(d, int) else 1 for d in i.shape]
    if "int" in i.type:
        feeds[i.name] = np.zeros(shape, np.int64)
    else:
        feeds[i.name] = np.zeros(shape, np.float16 if "16" in i.type else np.float32)
session.run(None, feeds)
"""

# CPU seconds of the phases of an analysis in a fresh process: imports (onnxinit, the graph
# loader, the propagator and the rules), load (read, shape inference, folding), propagation;
# with the command line's process settings (onnxinit/allocator.py), as a command runs
_PHASES = """
import sys, time, json
start = time.process_time()
from onnxinit.allocator import keep_freed_memory, no_huge_page_advice
keep_freed_memory()
import onnxinit
from onnxinit.graph import load
from onnxinit.propagate import propagate
from onnxinit.rules.catalog import load_rules
load_rules()
no_huge_page_advice()
imported = time.process_time()
graph = load(sys.argv[1], batch_size=int(sys.argv[2]))
loaded = time.process_time()
propagate(graph)
done = time.process_time()
print(json.dumps([imported - start, loaded - imported, done - loaded]))
"""

# CPU seconds of onnxinit.analyze alone (imports and rule loading done first), in this process
_ANALYZE_ONLY = """
import sys, time, json
import onnxinit
from onnxinit.rules.catalog import load_rules
load_rules()
from onnxinit.allocator import keep_freed_memory, no_huge_page_advice
keep_freed_memory()
no_huge_page_advice()
start = time.process_time()
onnxinit.analyze(sys.argv[1], batch_size=1)
print(json.dumps(time.process_time() - start))
"""


# CPU seconds of onnxinit.rescale(autoinit, keep_bias=True) alone, in this process
_KEEP_BIAS_ONLY = """
import sys, time, json
import onnxinit
from onnxinit.rules.catalog import load_rules
load_rules()
from onnxinit.allocator import keep_freed_memory, no_huge_page_advice
keep_freed_memory()
no_huge_page_advice()
start = time.process_time()
onnxinit.rescale(sys.argv[1], "autoinit", keep_bias=True, output=sys.argv[2])
print(json.dumps(time.process_time() - start))
"""


def timed(command: list[str], repeat: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds) of ``command`` run ``repeat`` times."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(command, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, check=False)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode not in (0, 1):  # check/analyze exit 1 on a flagged model
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
    return best_wall, best_cpu


def analyze_cpu(path: Path, repeat: int, script: str = _ANALYZE_ONLY) -> float:
    best = float("inf")
    extra = [str(path.with_name(path.stem + ".out.onnx"))] if script is _KEEP_BIAS_ONLY else []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", script, str(path), *extra], env=ENV,
                             capture_output=True, text=True, check=True)
        best = min(best, json.loads(out.stdout.strip().splitlines()[-1]))
    for leftover in extra:
        Path(leftover).unlink(missing_ok=True)
    return best


def model_path(name: str, folder: Path) -> Path | str:
    """The model file (built or exported on first use), or why it is skipped."""
    path = folder / f"{name}.onnx"
    if path.exists():
        return path
    if name == "resnet164":
        onnx.save(zoo.preact_resnet164(), path)
    elif name == "chain10k":
        onnx.save(zoo.chain(10_000), path)
    else:
        why = zoo.export_torch(name, path)
        if why is not None:
            return why
    return path


# issue 11's targets, whole process, seconds: (command, model) -> target
TARGETS = {
    ("--version", ""): 0.15,
    ("analyze", "resnet164"): 0.2,
    ("rescale", "resnet164"): 0.3,
    **{("analyze", name): 2.0 for name in zoo.TORCH_MODELS},
}


def target(command: str, model: str = "") -> float | None:
    return TARGETS.get((command, model))


def row(label: str, wall: float, cpu: float, ref: tuple[float, float] | None = None,
        goal: float | None = None) -> str:
    """One line: wall and CPU seconds, the ratios to the reference, and the target with a
    verdict on the wall clock (on a busy machine the CPU time says more: both are shown)."""
    text = f"  {label:28} wall {wall:7.2f} s  cpu {cpu:7.2f} s"
    if ref is not None:
        text += f"   ({wall / ref[0]:5.1f}x / {cpu / ref[1]:5.1f}x the reference)"
    if goal is not None:
        verdict = "ok" if wall <= goal else ("ok on CPU time" if cpu <= goal else "MISSED")
        text += f"   target <= {goal:g} s: {verdict}"
    return text


def startup(repeat: int) -> None:
    python = timed([sys.executable, "-c", "pass"], repeat)
    version = timed([*CLI, "--version"], repeat)
    print("start-up")
    print(row("python -c pass", *python))
    print(row("onnxinit --version", *version, python, target("--version")))
    print(row("onnxinit --help", *timed([*CLI, "--help"], repeat)), flush=True)


def models(names: list[str], folder: Path, repeat: int) -> None:
    print("\nwhole commands (reference: onnxruntime session + one forward at batch 1)")
    for name in names:
        path = model_path(name, folder)
        if not isinstance(path, Path):
            print(f"  {name}: skipped ({path})")
            continue
        proto = onnx.load(str(path), load_external_data=False)
        print(f"{name}: {len(proto.graph.node)} nodes", flush=True)
        reference = timed([sys.executable, "-c", _REFERENCE, str(path)], repeat)
        print(row("reference", *reference))
        print(row("analyze", *timed([*CLI, "analyze", str(path)], repeat), reference,
                  target("analyze", name)))
        out = folder / f"{name}.autoinit.onnx"
        rescaled = timed([*CLI, "rescale", str(path), "--method", "autoinit", "-o", str(out)],
                         repeat)
        print(row("rescale --method autoinit", *rescaled, reference, target("rescale", name)),
              flush=True)
        for leftover in (out, out.with_name(out.name + ".data")):
            leftover.unlink(missing_ok=True)


def phases(names: list[str], folder: Path, repeat: int, batch: int = 32) -> None:
    """Per model, the CPU seconds of each phase (best of ``repeat`` fresh processes), next to
    ``import numpy`` timed the same way."""
    def best(command: list[str]) -> list[float]:
        runs = [json.loads(subprocess.run(command, env=ENV, capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
                for _ in range(repeat)]
        return [min(r[i] for r in runs) for i in range(len(runs[0]))]

    numpy_cpu = best([sys.executable, "-c",
                      "import time, json, numpy; print(json.dumps([time.process_time()]))"])[0]
    print(f"\nphases: CPU seconds at batch {batch} (reference: python -c 'import numpy' "
          f"{numpy_cpu:.3f} s)")
    for name in names:
        path = model_path(name, folder)
        if not isinstance(path, Path):
            print(f"  {name}: skipped ({path})")
            continue
        imports, load, propagation = best([sys.executable, "-c", _PHASES, str(path), str(batch)])
        print(f"  {name:22} imports {imports:6.2f}  load {load:6.2f}  propagate "
              f"{propagation:6.2f}  total {imports + load + propagation:6.2f}", flush=True)


def scaling(folder: Path, repeat: int) -> None:
    print("\nscaling: CPU seconds of onnxinit.analyze (imports excluded; the Gemm chain: "
          "rescale --method autoinit --keep-bias)")
    series = {
        "chain": [(n, lambda n=n: zoo.chain(n)) for n in (1250, 2500, 5000, 10000, 20000)],
        "resnet (blocks/stage)": [(b, lambda b=b: zoo.preact_resnet(b))
                                  for b in (2, 4, 9, 18, 36)],
        "gemm-bias chain (layers), --keep-bias": [(n, lambda n=n: zoo.gemm_chain(n))
                                                  for n in (250, 500, 1000, 2000, 4000)],
    }
    for label, builds in series.items():
        script = _KEEP_BIAS_ONLY if "keep-bias" in label else _ANALYZE_ONLY
        nodes, seconds = [], []
        for size, build in builds:
            model = build()
            path = folder / f"scaling-{label.split()[0]}-{size}.onnx"
            onnx.save(model, path)
            nodes.append(len(model.graph.node))
            seconds.append(analyze_cpu(path, repeat, script))
            print(f"  {label} {size:6}: {nodes[-1]:6} nodes  {seconds[-1]:7.3f} s", flush=True)
            path.unlink()
        slope = np.polyfit(np.log(nodes), np.log(seconds), 1)[0]
        verdict = "ok" if slope <= 1.1 else "ABOVE 1.1"
        print(f"  {label}: log-log slope {slope:.2f} ({verdict})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet164,chain10k," + ",".join(zoo.TORCH_MODELS))
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure (best of)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder for the built and exported models (kept between runs)")
    parser.add_argument("--skip", default="",
                        help="parts to skip: startup,models,phases,scaling")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.cache or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if "startup" not in skip:
            startup(args.repeat)
        if "models" not in skip:
            models(args.models.split(","), folder, args.repeat)
        if "phases" not in skip:
            phases(args.models.split(","), folder, args.repeat)
        if "scaling" not in skip:
            scaling(Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
