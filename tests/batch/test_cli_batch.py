"""The command line over many models: folders and patterns, exit codes, output in input order,
--jsonl, --resume, --timeout, the progress bar and the summary, analyze and rescale."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxinit
from onnxinit import escape
from onnxinit.batch import find_models, run_many
from onnxinit.errors import InvalidOptionError

from ..cli import assert_one_line_error, run
from ..models import mlp
from .conftest import write_zoo
from .faults import behave

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def zoo_dir(tmp_path) -> Path:
    write_zoo(tmp_path / "zoo")
    return tmp_path / "zoo"


def test_folders_and_patterns(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    for name in ("a.onnx", "sub/B.ONNX", "sub/deeper/c.Onnx", "notes.txt", "a.onnx.bak"):
        (tmp_path / name).write_bytes(b"x")
    everything = [str(tmp_path / n) for n in ("a.onnx", "sub/B.ONNX", "sub/deeper/c.Onnx")]
    assert find_models([str(tmp_path)]) == everything
    assert find_models([f"{tmp_path}/*.onnx"]) == everything[:1]
    assert find_models([f"{tmp_path}/**/*.ONNX"]) == everything[1:2]
    assert find_models([f"{tmp_path}/s*"]) == everything[1:]  # a matched folder is searched
    assert find_models([everything[1], str(tmp_path)]) == [everything[1], everything[0],
                                                            everything[2]]  # each once
    assert find_models([str(tmp_path / "missing.onnx")]) == [str(tmp_path / "missing.onnx")]
    (tmp_path / "empty").mkdir()
    for argument in (tmp_path / "empty", f"{tmp_path}/*.pb"):
        with pytest.raises(InvalidOptionError):
            find_models([str(argument)])


def test_an_empty_folder_is_an_error(tmp_path, capsys):
    assert_one_line_error(*run(["check", tmp_path], capsys), "no .onnx file")


def test_check_a_folder_exit_codes_and_order(zoo_dir, capsys):
    code, out, err = run(["check", zoo_dir, "--jobs", "2", "--format", "json"], capsys)
    document = json.loads(out)
    assert code == 2
    assert [Path(m["model"]).name for m in document["models"]] == \
           ["a.onnx", "b.onnx", "bad.onnx", "c.onnx", "d.onnx"]
    assert [m["status"] for m in document["models"]] == \
           ["passed", "passed", "unreadable", "failed", "passed"]
    # one line per unreadable model, then the summary
    lines = err.strip().splitlines()
    assert lines[0].startswith("onnxinit: error: ") and "bad.onnx" in lines[0]
    assert "5 models in" in lines[1] and "3 passed, 1 failed, 1 unreadable" in lines[1]
    assert lines[2].startswith("onnxinit: slowest: ")
    # the same models one by one, in this process: the same document
    code_alone, out_alone, _ = run(["check", *find_models([str(zoo_dir)]), "--format", "json"],
                                   capsys)
    assert code_alone == 2 and json.loads(out_alone) == document

    (zoo_dir / "bad.onnx").unlink()
    assert run(["check", zoo_dir, "-j", "2", "-q"], capsys)[0] == 1
    (zoo_dir / "c.onnx").unlink()
    code, out, err = run(["check", zoo_dir, "-j", "auto", "-q"], capsys)
    assert code == 0 and err == "" and out.count("passed") == 3


def test_jsonl_streams_one_flushed_record_per_model(zoo_dir, tmp_path, capsys):
    """Each record is in the file when its result is handed on (before the next one)."""
    jsonl = tmp_path / "out.jsonl"
    models = find_models([str(zoo_dir)])
    stream = run_many(models, behave, {"sleep": {"d.onnx": 2}}, jobs=2, jsonl=str(jsonl))
    seen = 0
    for result in stream:
        seen += 1
        records = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert len(records) == seen and records[-1]["model"] == result.model
    code, out, _ = run(["check", zoo_dir, "-j", "2", "--jsonl", jsonl, "--format", "json"],
                       capsys)
    records = sorted((json.loads(line) for line in jsonl.read_text().splitlines()),
                     key=lambda r: r["index"])
    assert [r["status"] for r in records] == [m["status"] for m in json.loads(out)["models"]]
    assert all(r["command"] == "check" and r["sha256"] for r in records)
    assert records[0]["payload"] == json.loads(out)["models"][0]


def test_resume_from_the_command_line(zoo_dir, tmp_path, capsys):
    jsonl = tmp_path / "out.jsonl"
    first = run(["check", zoo_dir, "--jsonl", jsonl, "--format", "json"], capsys)
    again = run(["check", zoo_dir, "--jsonl", jsonl, "--format", "json", "--resume"], capsys)
    assert again[:2] == first[:2]  # exit code and output
    assert "; 5 from --resume" in again[2]
    assert len(jsonl.read_text().splitlines()) == 5  # nothing ran, nothing appended
    onnx.save(mlp([8, 16, 16, 16, 4], seed=7), str(zoo_dir / "c.onnx"))  # c fixed
    code, out, err = run(["check", zoo_dir, "--jsonl", jsonl, "--resume", "--format", "json"],
                         capsys)
    assert [m["status"] for m in json.loads(out)["models"]][3] == "passed"
    assert "; 4 from --resume" in err and len(jsonl.read_text().splitlines()) == 6
    code, _, err = run(["check", zoo_dir, "--jsonl", jsonl, "--resume", "--max-growth", "50"],
                       capsys)
    assert "from --resume" not in err  # other options: everything runs again


def test_option_errors_are_one_line(zoo_dir, tmp_path, capsys, monkeypatch):
    assert_one_line_error(*run(["check", zoo_dir, "--resume"], capsys), "--jsonl")
    assert_one_line_error(*run(["check", zoo_dir, "--jobs", "2", "--ray"], capsys), "--ray")
    assert_one_line_error(*run(["check", "--ray", zoo_dir], capsys), "not a Ray address",
                    "--ray=ADDRESS")
    monkeypatch.setitem(sys.modules, "ray", None)  # as when ray is not installed
    assert_one_line_error(*run(["check", zoo_dir, "--ray"], capsys), "pip install 'onnxinit[ray]'")
    assert_one_line_error(*run(["analyze", zoo_dir, "--ray=auto"], capsys), "onnxinit[ray]")
    assert not list(tmp_path.glob("*.jsonl"))


def test_timeout_from_the_command_line(zoo_dir, capsys):
    """No model is read, analysed and sent back within a millisecond."""
    code, out, err = run(["check", zoo_dir / "a.onnx", zoo_dir / "b.onnx", "--timeout", "0.001",
                          "--format", "json"], capsys)
    assert code == 2
    assert [m["status"] for m in json.loads(out)["models"]] == ["unreadable"] * 2
    assert err.count("timed out after 0.001 s (--timeout)") == 2


def test_progress_bar_on_a_terminal_only(zoo_dir, capsys, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    _, _, err = run(["check", zoo_dir, "-j", "2"], capsys)
    assert "5/5" in err and "model/s" in err
    _, _, err = run(["check", zoo_dir, "-j", "2", "-q"], capsys)
    assert "5/5" not in err and "models in" not in err
    monkeypatch.setenv("CI", "true")
    _, _, err = run(["check", zoo_dir, "-j", "2"], capsys)
    assert "5/5" not in err and "models in" in err


def test_analyze_many(zoo_dir, capsys):
    """Tables in input order; --json: one entry per model, each what onnxinit.analyze gives."""
    models = find_models([str(zoo_dir)])
    code, out, err = run(["analyze", zoo_dir, "-j", "2"], capsys)
    assert code == 2 and "bad.onnx" in err
    headers = [line for line in out.splitlines() if line.startswith("==> ")]
    assert headers == [f"==> {m} <==" for m in models if "bad" not in m]
    code, out, _ = run(["analyze", zoo_dir, "-j", "2", "--json"], capsys)
    document = json.loads(out)
    assert document["summary"] == {"models": 5, "ok": 4, "error": 1}
    for model, entry in zip(models, document["models"]):
        assert entry["model"] == model
        if "bad" in model:
            assert entry["status"] == "error" and "not a readable" in entry["error"]
        else:
            assert entry["analysis"] == json.loads(escape.dumps(onnxinit.analyze(model)
                                                                .to_dict()))
    # one model file: its analysis object, as ever, also when run in a worker
    code, out, _ = run(["analyze", models[0], "--json", "--timeout", "60"], capsys)
    assert code == 0 and json.loads(out) == document["models"][0]["analysis"]
    assert_one_line_error(*run(["analyze", models[2], "--timeout", "60"], capsys), "bad.onnx")


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_rescale_many(zoo_dir, tmp_path, capsys):
    """Each model is written beside its input, with the weights a one-model rescale writes;
    a second run skips the first run's outputs; file options need one MODEL."""
    (zoo_dir / "bad.onnx").unlink()
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(zoo_dir / "a.onnx", alone / "a.onnx")
    assert run(["rescale", alone / "a.onnx"], capsys)[0] == 0
    code, out, err = run(["rescale", zoo_dir, "-j", "2"], capsys)
    assert code == 0, err
    assert out.splitlines()[0] == f"wrote {zoo_dir / 'a.autoinit.onnx'}"
    for name in ("a", "b", "c", "d"):
        assert (zoo_dir / f"{name}.autoinit.onnx").exists()
    ours, reference = _weights(zoo_dir / "a.autoinit.onnx"), _weights(alone / "a.autoinit.onnx")
    assert ours.keys() == reference.keys()
    assert all(np.array_equal(ours[k], reference[k]) for k in ours)
    code, out, err = run(["rescale", zoo_dir, "--dry-run"], capsys)
    assert code == 0 and out.count("dry run") == 4, out  # not the .autoinit.onnx files
    assert_one_line_error(*run(["rescale", zoo_dir, "-o", tmp_path / "x.onnx"], capsys),
                    "-o/--output", "one MODEL")
    assert_one_line_error(*run(["rescale", zoo_dir, "--report", tmp_path / "r.json"], capsys),
                    "--report")


def test_the_one_model_path_starts_no_worker_machinery():
    """One model, no batch options: nothing of multiprocessing or Ray is imported."""
    code = ("import sys\nfrom onnxinit.cli import main\n"
            "try:\n    main(['check', 'sample_models/small_cnn.onnx', '-q'])\n"
            "except SystemExit:\n    pass\n"
            "print(sorted(m for m in ('multiprocessing', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
