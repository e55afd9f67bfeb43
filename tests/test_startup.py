"""What starting the command line imports: ``--version`` and ``--help`` only click; ``import
onnxinit`` nothing heavy until a name is used. Checked in fresh interpreters through
``sys.modules`` (no timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("numpy", "onnx", "onnxruntime", "scipy", "networkx", "tqdm", "threadpoolctl")


def _modules_after(code: str) -> set[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = f"import sys, json\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_version_and_help_import_no_heavy_package(argv):
    code = ("from onnxinit.cli import main\n"
            "try:\n"
            f"    main({argv!r})\n"
            "except SystemExit:\n"
            "    pass")
    modules = _modules_after(code)
    assert "click" in modules and "onnxinit.cli" in modules
    assert not _heavy(modules), _heavy(modules)
    assert not {"onnxinit.graph", "onnxinit.analysis", "onnxinit.rescale"} & modules


def test_import_onnxinit_is_light_until_a_name_is_used():
    assert not _heavy(_modules_after("import onnxinit\nonnxinit.__version__"))
    used = _modules_after("import onnxinit\nonnxinit.analyze")
    assert "onnxinit.analysis" in used and "numpy" in used


def test_public_names_resolve_and_rescale_stays_the_function():
    import onnxinit

    for name in onnxinit.__all__:
        assert getattr(onnxinit, name) is not None, name
    import onnxinit.rescale  # the submodule shares the function's name

    assert callable(onnxinit.rescale) and onnxinit.rescale.__name__ == "rescale"


def test_the_help_list_is_each_commands_own_short_help():
    from onnxinit.cli import COMMANDS, cli

    assert sorted(COMMANDS) == sorted(cli.list_commands(None))
    for name, (_, _, short) in COMMANDS.items():
        command = cli.get_command(None, name)
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == short, name


def test_analyze_imports_only_what_the_forward_analysis_needs(tmp_path):
    """``analyze`` without --backward/--measure/--plot runs no autodiff, gradient rule,
    initialization method, onnxruntime session or progress bar: none of them is imported."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    weight = numpy_helper.from_array(np.ones((4, 4), np.float32) * 0.5, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
        "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])], [weight])
    path = tmp_path / "small.onnx"
    path.write_bytes(helper.make_model(graph, ir_version=8,
                                       opset_imports=[helper.make_opsetid("", 17)])
                     .SerializeToString())
    code = ("from onnxinit.cli import main\n"
            "try:\n"
            f"    main(['analyze', {str(path)!r}, '-q'])\n"
            "except SystemExit as exit:\n"
            "    assert exit.code in (0, None), exit.code")
    modules = _modules_after(code)
    assert "onnxinit.analysis" in modules and "onnxinit.propagate" in modules  # it did run
    unexpected = sorted(m for m in modules if m.split(".")[0] in ("onnxruntime", "tqdm")
                        or m.startswith(("onnxinit.autodiff", "onnxinit.gradrules",
                                         "onnxinit.methods", "onnxinit.backward",
                                         "onnxinit.weights", "onnxinit.reporting",
                                         "onnxinit.rescale")))
    assert not unexpected, unexpected
    # scipy.special's package __init__ (an array-API layer importing numpy.f2py, numpy.ma and
    # numpy.testing: 0.3 s of CPU) is not run; onnxinit.special loads its ufuncs directly
    assert "scipy.special._ufuncs" in modules
    assert "scipy.special" not in modules and "numpy.f2py" not in modules


def test_a_model_with_binary_ops_does_not_import_scipy_special(tmp_path):
    """The element-wise binary rule's normalised-product check (rules/row_norm.py) uses
    gammaln from onnxinit.special, not from scipy.special's package (1 s of CPU on Swin-T)."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    inits = [numpy_helper.from_array(np.ones((4, 4), np.float32) * 0.5, "w"),
             numpy_helper.from_array(np.ones(4, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"]),
             helper.make_node("Add", ["y", "b"], ["a"]),
             helper.make_node("Tanh", ["a"], ["t"]),
             helper.make_node("Mul", ["t", "y"], ["z"])]
    graph = helper.make_graph(nodes, "small",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 4])],
                              inits)
    path = tmp_path / "binary.onnx"
    path.write_bytes(helper.make_model(graph, ir_version=8,
                                       opset_imports=[helper.make_opsetid("", 17)])
                     .SerializeToString())
    modules = _modules_after(f"import onnxinit\nonnxinit.analyze({str(path)!r})")
    assert "onnxinit.rules.row_norm" in modules and "scipy.special._ufuncs" in modules
    assert "scipy.special" not in modules


def test_onnxinit_special_is_scipy_special():
    """The ufuncs are scipy.special's own objects, also once the real package is imported,
    and any other name comes from the real package."""
    code = ("from onnxinit import special\n"
            "import scipy.special as real\n"
            "assert all(getattr(special, n) is getattr(real, n) for n in special.__all__)\n"
            "assert special.logsumexp is real.logsumexp")
    assert "scipy.special" in _modules_after(code)


def test_the_rescale_command_imports_no_autodiff_or_onnxruntime_until_a_method_needs_it():
    """``rescale --method autoinit`` builds every method's options, but the autodiff and
    onnxruntime are imported only when a data-driven method runs."""
    modules = _modules_after("import onnxinit.cli.rescale\nimport onnxinit.methods")
    assert "onnxinit.methods.gradinit" in modules  # the methods are there
    unexpected = sorted(m for m in modules if m.split(".")[0] == "onnxruntime"
                        or m.startswith("onnxinit.autodiff"))
    assert not unexpected, unexpected
