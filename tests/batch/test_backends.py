"""The same promises from both engines, local worker processes (``jobs=2``) and Ray tasks (a
local Ray instance with 2 CPUs, started once for this module and shut down after it): results
in input order, a corrupt model among good ones, a per-model timeout, a worker killed mid-task
(retried), resume.

Ray tests skip when ray is not installed, and fail instead when ONNXINIT_REQUIRE_RAY=1 (CI);
the instance is the ``ray_instance`` fixture of ``conftest.py``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time

import pytest

from onnxinit.batch import check_many, exit_status, in_order, run_many

from ..cli import run
from .conftest import write_zoo
from .faults import behave, calls

@pytest.fixture(params=["local", "ray"])
def engine(request) -> dict:
    """The batch keyword arguments of one engine."""
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
        return {"ray": True}
    return {"jobs": 2}


def _names(paths) -> list[str]:
    return [os.path.basename(p) for p in paths]


def test_results_come_back_in_input_order(zoo, engine):
    """The first model is the slowest: it finishes last, and is still first in input order."""
    raw = list(run_many(zoo, behave, {"sleep": {"a.onnx": 4}}, **engine))
    assert sorted(r.index for r in raw) == list(range(len(zoo)))
    assert raw[0].index != 0, [r.index for r in raw]  # out of order as they complete
    ordered = in_order(raw)
    assert [r.model for r in ordered] == zoo
    assert [r.payload["name"] for r in ordered] == _names(zoo)  # each payload is its model's


def test_a_corrupt_model_among_good_ones(zoo, engine):
    """Every model gets the result it gets alone, in this process (the oracle): the corrupt one
    is unreadable with its reason, the others are checked, and the batch exits 2."""
    results = in_order(check_many(zoo, **engine))
    alone = in_order(check_many(zoo))
    assert [r.status for r in results] == ["passed", "passed", "unreadable", "failed", "passed"]
    assert [r.payload for r in results] == [r.payload for r in alone]
    assert "not a readable ONNX model" in results[2].error and results[2].payload is None
    assert exit_status(results) == 2 and exit_status(results[:2] + results[3:]) == 1


def test_a_model_past_its_timeout_is_killed_and_the_others_finish(zoo, engine):
    results = in_order(run_many(zoo, behave, {"hang": ["b.onnx"]}, timeout=3, **engine))
    assert [r.status for r in results] == ["ok", "timeout", "ok", "ok", "ok"]
    assert "timed out after 3 s" in results[1].error
    assert results[1].payload is None
    assert not multiprocessing.active_children()  # killed, not left behind


def test_a_worker_killed_mid_task_is_retried(zoo, engine, tmp_path):
    """b's worker is killed (SIGKILL, as the OOM killer does) the first time: b runs again and
    succeeds; the others run once."""
    options = {"die_once": ["b.onnx"], "markers": str(tmp_path), "calls": str(tmp_path / "calls")}
    results = in_order(run_many(zoo, behave, options, retries=1, **engine))
    assert (tmp_path / "b.onnx.attempted").exists()
    assert [r.status for r in results] == ["ok"] * len(zoo)
    assert results[1].payload["name"] == "b.onnx"
    ran = calls(tmp_path / "calls")
    assert ran.count("b.onnx") == 2 and sorted(set(ran)) == sorted(_names(zoo))
    assert len(ran) == len(zoo) + 1


def test_a_worker_that_dies_every_time_is_reported_crashed(zoo, engine, tmp_path):
    options = {"die": ["d.onnx"], "calls": str(tmp_path / "calls")}
    results = in_order(run_many(zoo, behave, options, retries=0, **engine))
    assert [r.status for r in results] == ["ok", "ok", "ok", "ok", "crashed"]
    assert "died" in results[4].error and results[4].payload is None
    assert calls(tmp_path / "calls").count("d.onnx") == 1


def test_a_worker_killed_under_a_timeout_is_retried(zoo, engine, tmp_path):
    """With --timeout the model runs in a process of its own (on the Ray worker too): its death
    is retried the same way."""
    options = {"die_once": ["b.onnx"], "markers": str(tmp_path)}
    results = in_order(run_many(zoo[:3], behave, options, timeout=60, retries=1, **engine))
    assert [r.status for r in results] == ["ok", "ok", "ok"]
    assert (tmp_path / "b.onnx.attempted").exists()


def test_resume_runs_only_what_is_not_done(engine, tmp_path):
    """The models that really run are counted by the work itself (a file of calls). A second
    run with resume runs none of the finished models, and the one that timed out again; a
    changed file and changed options run again."""
    zoo = write_zoo(tmp_path / "zoo")
    jsonl, log = tmp_path / "results.jsonl", tmp_path / "calls"
    options = {"hang_once": ["c.onnx"], "markers": str(tmp_path), "calls": str(log)}
    first = in_order(run_many(zoo, behave, options, timeout=3, jsonl=str(jsonl), **engine))
    assert [r.status for r in first].count("timeout") == 1
    assert len(jsonl.read_text().splitlines()) == len(zoo)

    log.unlink()
    second = in_order(run_many(zoo, behave, options, timeout=30, jsonl=str(jsonl),
                               resume=True, **engine))
    assert calls(log) == ["c.onnx"]
    assert [r.status for r in second] == ["ok"] * len(zoo)
    assert [r.payload for r in second if r.model != zoo[3]] == \
           [r.payload for r in first if r.model != zoo[3]]
    assert len(jsonl.read_text().splitlines()) == len(zoo) + 1  # appended, not rewritten

    log.unlink()
    with open(zoo[0], "ab") as f:  # a changed file
        f.write(b"\x00")
    in_order(run_many(zoo, behave, options, jsonl=str(jsonl), resume=True, **engine))
    assert calls(log) == ["a.onnx"]
    log.unlink()
    options["sleep"] = {"x": 0}  # changed options: everything runs
    in_order(run_many(zoo, behave, options, jsonl=str(jsonl), resume=True, **engine))
    assert sorted(calls(log)) == sorted(_names(zoo))


def test_stopping_early_leaves_no_process(zoo, engine):
    """A caller that stops reading (a NAS loop that found its model) ends the work."""
    stream = run_many(zoo, behave, {"hang": ["a.onnx"]}, **engine)
    first = next(iter(stream))
    stream.close()
    assert first.index > 0
    assert not multiprocessing.active_children()


def test_ctrl_c_kills_the_worker_processes(zoo, tmp_path):
    """Ctrl-C while the workers hang: the interrupt ends the wait, and the processes. The
    interrupt is sent once both workers are running their model (on a loaded machine starting
    them can take longer than any fixed delay)."""
    started = tmp_path / "calls"

    def interrupt_once_both_run():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if started.exists() and len(started.read_text().split()) >= 2:
                break
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    # Python's own handler: a Ray driver started earlier in this process replaces it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Thread(target=interrupt_once_both_run)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        try:
            list(run_many(zoo, behave, {"hang": _names(zoo), "calls": str(started)}, jobs=2))
        finally:
            signal.signal(signal.SIGINT, previous)
    timer.join()
    assert not multiprocessing.active_children()


class _InterruptedAfterStart(multiprocessing.get_context("forkserver").Process):
    """A worker process whose start is followed at once by Ctrl-C (pickled by name, so at
    module level)."""

    def start(self):
        super().start()
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_while_a_worker_starts_leaves_no_process(zoo, monkeypatch):
    """An interrupt that lands just after a worker started, before the engine recorded it: the
    engine still knows the process and kills it."""
    from onnxinit.batch import local

    context = local._context()

    class Context:
        Process = _InterruptedAfterStart

        def __getattr__(self, name):
            return getattr(context, name)

    monkeypatch.setattr(local, "_context", Context)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            list(run_many(zoo, behave, {"hang": _names(zoo)}, jobs=2))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert not multiprocessing.active_children()


def test_the_command_line_on_ray(ray_instance, tmp_path, capsys):
    """``check FOLDER --ray`` in a process already connected to Ray submits there (and leaves
    the connection open): the same output and exit code as in this process, then resume."""
    write_zoo(tmp_path / "zoo")
    jsonl = tmp_path / "results.jsonl"
    code, out, err = run(["check", tmp_path / "zoo", "--ray", "--jsonl", jsonl, "--format",
                          "json"], capsys)
    alone = run(["check", tmp_path / "zoo", "--format", "json"], capsys)
    assert out.startswith("{") and out.rstrip().endswith("}"), (out, err)
    assert code == alone[0] == 2 and json.loads(out) == json.loads(alone[1])
    assert "5 models in" in err and "Ray" in err
    assert ray_instance.is_initialized()
    again = run(["check", tmp_path / "zoo", "--ray", "--jsonl", jsonl, "--resume", "--format",
                 "json"], capsys)
    assert again[:2] == (code, out) and "5 from --resume" in again[2]
