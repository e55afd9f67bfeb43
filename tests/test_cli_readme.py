"""Every promise of the README and of ``--help`` about the command line: each ``onnxinit``
command shown in a README code block or in a command's ``Examples:`` runs (in a scratch folder
where its file names exist), and each ``--option`` the README names anywhere is an option of the
command line."""

from __future__ import annotations

import glob
import os
import re
import shlex
from importlib.util import find_spec
from pathlib import Path

import click
import numpy as np
import pytest

from onnxinit.cli import cli

from .cli import run

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
SAMPLES = REPO / "sample_models"

# file names the README's examples use, and the sample each one stands for
STAND_INS = {"model.onnx": "small_cnn", "resnet.onnx": "small_cnn"}
# iterative methods run a few steps here; the commands are otherwise exactly the README's
CAPS = {"gradinit": ["--gradinit-iterations", "2"], "metainit": ["--metainit-steps", "1"],
        "nio": ["--nio-iterations", "1"]}
EXPECTED_EXIT = {"check sample_models/resnet20_nobn.onnx": 1}


def readme_commands() -> list[str]:
    """Every ``onnxinit ...`` command in the README's code blocks (shell prompts, ``&&``
    chains, workflow ``run:`` steps and commented-out alternatives included), in order."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"^\s*#?\s*(- )?(run: )?\$? ?", "", line)
            for part in line.split("&&"):
                part = part.strip()
                if part.startswith("onnxinit "):
                    commands.append(re.sub(r"\s+#.*$", "", part))
    return commands


def help_examples() -> list[str]:
    """The commands in the ``Examples:`` of every subcommand's help."""
    return [line.strip().split("  #")[0].strip()
            for command in cli.commands.values() for line in (command.help or "").splitlines()
            if line.strip().startswith("onnxinit ")]


def _bert_like(path: Path) -> None:
    """Token ids [batch, seq] (both symbolic) through an embedding and a MatMul."""
    from onnx import helper, numpy_helper, save_model

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((100, 16)).astype(np.float32), "emb")
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32) / 4, "w")
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes, "bert", [helper.make_tensor_value_info("input_ids", 7, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", 1, ["batch", "seq", 16])], [table, w])
    save_model(helper.make_model(graph, ir_version=8,
                                 opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _all_options(command: click.Command) -> set[str]:
    names = {o for p in command.params if isinstance(p, click.Option) for o in p.opts}
    for sub in getattr(command, "commands", {}).values():
        names |= _all_options(sub)
    return names


def test_every_option_the_readme_names_exists():
    known = _all_options(cli)
    named = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", README))
    named -= {"--help", "--version"}  # click's own
    not_cli = {"--all-files", "--files", "--repo", "--pre-commit", "--quick", "--depth",
               "--activation", "--lr", "--seeds", "--models", "--threads", "--repeats",
               *TRAINING_BENEFIT_OPTIONS, "--no-sweep-scale-lr",  # argparse's negation
               *GATE_CALIBRATION_OPTIONS, *METHOD_COST_OPTIONS,
               "--size", "--variants", "--runs", "--before", "--torch-check", "--onnx",
               "--train-seeds",  # metainit_diagnosis.py's
               "--match",  # the per-map traces' tensor filter
               "--repeat", "--skip",  # benchmark scripts' options (analyze_speed.py's last)
               "--seed"}  # real_exports.py's and real_accuracy_sequence.py's weight draw
    assert sorted(named - known - not_cli) == []


# options the README names that are benchmarks/training_benefit.py's (not the CLI's)
TRAINING_BENEFIT_OPTIONS = ("--image", "--inits", "--lrs", "--plot", "--sweep-scale-lr",
                            "--epochs", "--at-best-of", "--report", "--scale-lrs")


# and benchmarks/gate_calibration.py's
GATE_CALIBRATION_OPTIONS = ("--no-train", "--no-check", "--table")
# and benchmarks/method_cost.py's
METHOD_COST_OPTIONS = ("--methods", "--repeats", "--models")


@pytest.mark.parametrize("script, names", [("training_benefit.py", TRAINING_BENEFIT_OPTIONS),
                                           ("gate_calibration.py", GATE_CALIBRATION_OPTIONS),
                                           ("method_cost.py", METHOD_COST_OPTIONS)])
def test_benchmark_options_exist(script, names):
    source = (Path(__file__).resolve().parents[1] / "benchmarks" / script).read_text()
    for name in names:
        assert f'"{name}"' in source, name


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    (folder / "sample_models").symlink_to(SAMPLES)
    for name, stem in STAND_INS.items():
        (folder / name).write_bytes((SAMPLES / f"{stem}.onnx").read_bytes())
    _bert_like(folder / "bert.onnx")
    (folder / "models").mkdir()
    for stem in ("small_cnn", "tanh_mlp50"):
        (folder / "models" / f"{stem}.onnx").write_bytes((SAMPLES / f"{stem}.onnx").read_bytes())
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.standard_normal((128, 3, 32, 32)).astype(np.float32),
             labels=rng.integers(0, 10, 128))
    return folder


def _argv(command: str, folder: Path) -> tuple[list[str], Path | None]:
    words = shlex.split(command)[1:]
    target = None
    if ">" in words:
        at = words.index(">")
        words, target = words[:at], folder / words[at + 1]
    argv = []
    for word in words:
        word = word.replace("/tmp/", f"{folder}/")
        argv += sorted(glob.glob(word, root_dir=folder)) if "*" in word else [word]
    method = argv[argv.index("--method") + 1] if "--method" in argv else "autoinit"
    for name in method.split(","):
        argv += CAPS.get(name, [])
    return argv, target


def _runnable(argv: list[str]) -> bool:
    """A --ray command needs the ray extra: without it, it is left out (never with
    ONNXINIT_REQUIRE_RAY=1, as in CI)."""
    if not any(a == "--ray" or a.startswith("--ray=") for a in argv):
        return True
    return find_spec("ray") is not None or os.environ.get("ONNXINIT_REQUIRE_RAY") == "1"


def test_every_documented_command_runs(sandbox, capsys, monkeypatch):
    commands = readme_commands()
    assert len(commands) >= 15 and any(c.startswith("onnxinit check") for c in commands)
    examples = help_examples()
    assert {c.split()[1] for c in examples} == set(cli.commands)  # every command has some
    monkeypatch.chdir(sandbox)
    for command in commands + examples:
        argv, target = _argv(command, sandbox)
        if not _runnable(argv):
            continue
        code, out, err = run(argv, capsys)
        expected = EXPECTED_EXIT.get(" ".join(command.split()[1:]))
        gate = (0, 1) if argv[0] == "check" else (0,)  # the examples show no verdict
        assert code == expected if expected is not None else code in gate, (
            f"{command}: exit {code}\n{err}")
        assert "Traceback" not in err and "error:" not in err, f"{command}:\n{err}"
        if target is not None:
            target.write_text(out)
    assert (sandbox / "model.autoinit.onnx").exists()
    assert (sandbox / "model.autoinit.safetensors").exists()
