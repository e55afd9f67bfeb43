"""The command line's contract, for every subcommand and every option, enumerated from the click
command tree (so options and commands added later are covered without editing this file):

- ``--help`` documents the option;
- a bad value exits 2 with one line on stderr, no traceback, nothing on stdout, no file written;
- a method option that the chosen method(s) do not read is refused the same way, naming the
  option and the methods that take it (items 4 and 5 of issue 13).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import click
import numpy as np
import pytest

from onnxinit.cli import cli
from onnxinit.methods import METHODS

from .cli import run

# onnxinit's own click types and option table are imported where used, so that this file also
# runs (and shows what fails) against versions of onnxinit without them


def _number_type():
    from onnxinit.cli._params import Number

    return Number

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "sample_models" / "small_cnn.onnx"
SKIP = {"help", "version"}
# bad values for string-valued options, by option (a new string option needs an entry here)
BAD_STRINGS = {"--input-shape": "x:0x3x32x32", "--stats": "x:0,0", "--method": "no-such-method",
               "--data": "{tmp}/missing.npz", "--loss-output": "no_such_output",
               "--ray": "not-an-address"}


def commands() -> dict[str, click.Command]:
    return dict(cli.commands)


def options(command: click.Command) -> list[click.Option]:
    return [p for p in command.params if isinstance(p, click.Option) and p.name not in SKIP]


def takers() -> dict[str, list[str]]:
    """Method option (``--name``) -> the methods that read it: the fields declared with
    ``option`` (they carry help text) of each method's options dataclass."""
    out: dict[str, list[str]] = {}
    for method, (_, options_class) in METHODS.items():
        for f in dataclasses.fields(options_class):
            if "help" in f.metadata:
                out.setdefault("--" + f.name.replace("_", "-"), []).append(method)
    return out


def base_args(name: str, command: click.Command, tmp: Path) -> list[str]:
    """A valid invocation of ``command`` that writes only inside ``tmp``."""
    args = [name]
    if any(isinstance(p, click.Argument) and p.name in ("model", "models")
           for p in command.params):
        args.append(str(MODEL))
    if name == "rescale":
        args += ["-o", str(tmp / "out.onnx")]
    if name == "export-weights":
        args += ["-o", str(tmp / "w.npz")]
    if name == "report":
        args += ["-o", str(tmp / "report.html")]
    return args


def bad_values(option: click.Option, tmp: Path) -> list[str]:
    kind = option.type
    if option.is_flag or option.count:
        return []
    if isinstance(kind, click.Choice):
        return ["no-such-choice"]
    if isinstance(kind, _number_type()):
        limits = kind.limits
        values = ["nan", "inf", "abc"]
        for low in (limits.gt, limits.ge):
            if low is not None:
                values.append(str(low - 1 if kind.kind is int else low - 0.5))
        if limits.gt is not None:
            values.append(str(limits.gt))
        for high in (limits.lt, limits.le):
            if high is not None:
                values.append(str(high + 1))
        return values
    if isinstance(kind, click.types._NumberRangeBase):
        values = ["abc"]
        if kind.min is not None:
            values.append(str(kind.min - 1))
        if isinstance(kind, click.FloatRange):
            values += ["nan", "inf"]
        return values
    if isinstance(kind, click.Path):
        return [str(tmp / "no-such-folder" / "file.ext")]
    opt = max(option.opts, key=len)
    assert opt in BAD_STRINGS, f"add a bad value for {opt} to BAD_STRINGS"
    return [BAD_STRINGS[opt].format(tmp=tmp)]


def _cases():
    for name, command in commands().items():
        for option in options(command):
            yield pytest.param(name, max(option.opts, key=len), id=f"{name}{max(option.opts)}")


def _option(name: str, flag: str) -> click.Option:
    return next(o for o in options(commands()[name]) if flag in o.opts)


@pytest.mark.parametrize("name, flag", list(_cases()))
def test_help_documents_every_option(name, flag, capsys):
    option = _option(name, flag)
    code, out, _ = run([name, "--help"], capsys)
    assert code == 0 and all(opt in out for opt in option.opts)
    assert option.help and len(option.help) > 10


@pytest.mark.parametrize("name, flag", list(_cases()))
def test_bad_values_are_one_line_errors_that_write_nothing(name, flag, tmp_path, capsys):
    command, option = commands()[name], _option(name, flag)
    readers = takers().get(flag)
    for value in bad_values(option, tmp_path):
        args = base_args(name, command, tmp_path)
        if readers:
            args += ["--method", readers[0]]
        code, out, err = run([*args, flag, value], capsys)
        assert code == 2, f"{flag} {value}: exit {code}\n{err}"
        assert out == "" and "Traceback" not in err, f"{flag} {value}: {out}{err}"
        assert len(err.strip().splitlines()) == 1 and err.startswith("onnxinit: error:"), err
        assert not any(tmp_path.rglob("*")), f"{flag} {value} wrote {list(tmp_path.rglob('*'))}"


def test_every_command_refuses_a_missing_model(tmp_path, capsys):
    for name, command in commands().items():
        args = base_args(name, command, tmp_path)
        if str(MODEL) not in args:
            continue
        args[args.index(str(MODEL))] = str(tmp_path / "missing.onnx")
        code, out, err = run(args, capsys)
        assert code == 2 and out == "", (name, code, err)
        assert len(err.strip().splitlines()) == 1 and "no such file" in err
        assert not any(tmp_path.iterdir())


def _valid_value(option: click.Option) -> list[str]:
    if option.is_flag:
        return []
    if isinstance(option.type, click.Choice):
        return [option.type.choices[-1]]
    if isinstance(option.type, _number_type()):
        limits = option.type.limits
        low = next((v for v in (limits.ge, limits.gt) if v is not None), 0)
        high = next((v for v in (limits.le, limits.lt) if v is not None), low + 2)
        value = (low + high) / 2 if math.isfinite(high) else low + 1
        return [str(int(value) if option.type.kind is int else value)]
    return ["x.npz" if "data" in option.name else "logits"]


@pytest.mark.parametrize("flag", sorted(takers()))
def test_an_option_no_chosen_method_reads_is_refused(flag, tmp_path, capsys):
    """Item 4: `--method lsuv --target-var 0.25` ran with lsuv's own target and exit 0."""
    readers = takers()[flag]
    others = [m for m in METHODS if m not in readers]
    if not others:
        pytest.skip(f"every method reads {flag}")
    option = _option("rescale", flag)
    for method in sorted({others[0], others[-1]}):
        code, out, err = run(["rescale", MODEL, "-o", tmp_path / "o.onnx", "--method", method,
                              flag, *_valid_value(option)], capsys)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert flag in err and all(m in err for m in readers), err
        assert not any(tmp_path.iterdir())


def test_issue_examples_of_unread_options(tmp_path, capsys):
    code, _, err = run(["rescale", MODEL, "--method", "lsuv", "--target-var", "0.25",
                        "-o", tmp_path / "o.onnx"], capsys)
    assert code == 2 and "--target-var is an option of autoinit" in err
    code, _, err = run(["rescale", MODEL, "--method", "autoinit", "--data", "missing.npz",
                        "--loss", "mse", "--nio-lr", "5", "-o", tmp_path / "o.onnx"], capsys)
    assert code == 2 and all(f in err for f in ("--data", "--loss", "--nio-lr"))
    # a composition reads the union of its methods' options
    code, _, err = run(["rescale", MODEL, "--method", "kaiming,lsuv", "--distribution", "normal",
                        "--lsuv-max-iterations", "1", "--dry-run"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "1e999"])
def test_target_var_is_checked_in_the_users_terms(value, tmp_path, capsys):
    """Item 5: --target-var 0 wrote an all-zero network with exit 0; -1, nan, inf ended in a
    numpy RuntimeWarning and "a Change's scale must be finite"."""
    code, out, err = run(["rescale", MODEL, "--target-var", value, "-o", tmp_path / "o.onnx"],
                         capsys)
    assert code == 2 and out == "" and not any(tmp_path.iterdir())
    assert "--target-var" in err and "must be" in err and "> 0" in err
    assert "RuntimeWarning" not in err and "Change" not in err


def test_python_api_checks_the_same_ranges(tmp_path):
    from onnxinit.errors import InvalidOptionError
    from onnxinit.rescale import rescale

    with pytest.raises(InvalidOptionError, match="--target-var must be > 0"):
        rescale(MODEL, "autoinit", write=False, target_var=0.0)
    with pytest.raises(InvalidOptionError, match="--target-var is an option of autoinit"):
        rescale(MODEL, "lsuv", write=False, target_var=0.25)
    with pytest.raises(InvalidOptionError, match="--gradinit-lr must be > 0, not -1"):
        rescale(MODEL, "gradinit", write=False, gradinit_lr=-1.0)


def test_help_groups_method_options_in_documented_order(capsys):
    """Item 4: each method's options in a group of their own, groups in the order the methods
    are documented (METHODS, the README's table)."""
    code, out, _ = run(["rescale", "--help"], capsys)
    assert code == 0
    titles = [line[len("Options of "):-1] for line in out.splitlines()
              if line.startswith("Options of ")]
    order = list(METHODS)
    firsts = [order.index(t.split(", ")[0]) for t in titles]
    assert firsts == sorted(firsts) and len(titles) == len(set(titles))
    for flag, readers in takers().items():
        section = out.split(f"Options of {', '.join(readers)}:", 1)[1].split("\n\n", 1)[0]
        assert flag in section, flag
    assert "Options of autoinit:" in out and "Options of nio:" in out


def test_lsuv_reads_inputs_only(tmp_path, capsys):
    """Item 10: lsuv with --data holding inputs only was refused ("cross_entropy loss needs
    labels") although LSUV runs forward passes only."""
    data = tmp_path / "inputs.npz"
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.standard_normal((32, 3, 32, 32)).astype(np.float32))
    code, out, err = run(["rescale", MODEL, "--method", "lsuv", "--data", data,
                          "--batch-size", "16", "-o", tmp_path / "o.onnx"], capsys)
    assert code == 0 and out.startswith("wrote "), err
    assert (tmp_path / "o.onnx").exists() and "labels" not in err


def test_metainit_does_not_ask_for_real_data(tmp_path, capsys, monkeypatch):
    """Item 15: metainit is task-agnostic; the "real data works better" notice is for the
    methods that fit the data they see."""
    from onnxinit import data as data_module

    monkeypatch.setitem(data_module._NOTICE, "shown", False)
    code, _, err = run(["rescale", MODEL, "--method", "metainit", "--metainit-steps", "1",
                        "--dry-run"], capsys)
    assert code == 0 and "real data" not in err
    code, _, err = run(["rescale", MODEL, "--method", "gradinit", "--gradinit-iterations", "1",
                        "--dry-run"], capsys)
    assert code == 0 and "real data" in err


def test_method_option_messages_say_what_is_accepted(capsys):
    """Item 15: --gradinit-lr -1 said "must be positive (iterations: >= 0)"."""
    code, _, err = run(["rescale", MODEL, "--method", "gradinit", "--gradinit-lr", "-1",
                        "--dry-run"], capsys)
    assert code == 2 and "'--gradinit-lr'" in err and "must be > 0" in err
    assert "iterations" not in err
