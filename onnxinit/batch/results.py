"""The outcome of one model's job, its statuses, and the exit status of a batch.

Statuses: ``passed`` / ``failed`` (``check``: findings that fail the gate), ``ok`` (``analyze``,
``rescale`` and custom work), ``unreadable`` (``check``: the model could not be read or
analysed), ``error`` (the work raised: an onnxinit error, or a bug, which the message says),
``timeout`` (killed after ``--timeout`` seconds) and ``crashed`` (the worker process died, after
its retries). The exit status of a batch is that of the single-model commands: 2 when any model
was not processed (``unreadable``, ``error``, ``timeout``, ``crashed``), else 1 when any
``failed``, else 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

OK, PASSED, FAILED = "ok", "passed", "failed"
UNREADABLE, ERROR, TIMEOUT, CRASHED = "unreadable", "error", "timeout", "crashed"
NOT_PROCESSED = (UNREADABLE, ERROR, TIMEOUT, CRASHED)
STATUSES = (PASSED, FAILED, OK, *NOT_PROCESSED)
# a result with one of these is a property of the file and the options, so --resume reuses it;
# timeout, crashed and error (a bug or the machine) are tried again
FINAL = (PASSED, FAILED, OK, UNREADABLE)


@dataclass
class Result:
    """One model's outcome. ``index`` is the model's position in the input, ``payload`` the
    work's JSON-able output (None unless it ran to the end), ``seconds`` the wall time of the
    last attempt. ``key`` identifies the command and its options, ``sha256`` the file's bytes
    (model and external data; None when not computed or not readable): --resume matches both."""

    index: int
    model: str
    status: str
    payload: dict | None = None
    error: str | None = None
    seconds: float = 0.0
    command: str = ""
    key: str = ""
    sha256: str | None = None
    resumed: bool = False
    log: list[tuple[int, str]] = field(default_factory=list, repr=False)

    @property
    def processed(self) -> bool:
        return self.status not in NOT_PROCESSED

    def to_json(self) -> dict:
        """The JSON Lines record (``log`` left out: its lines were printed when it ran)."""
        out = asdict(self)
        del out["log"], out["resumed"]
        return out

    @classmethod
    def from_json(cls, record: dict) -> Result:
        names = {f.name for f in fields(cls)} - {"log", "resumed"}
        return cls(**{k: v for k, v in record.items() if k in names})


def exit_status(results: list[Result]) -> int:
    """0 every model passed (or ran), 1 findings in a model that was read, 2 a model was not
    processed."""
    statuses = {r.status for r in results}
    if statuses & set(NOT_PROCESSED):
        return 2
    return 1 if FAILED in statuses else 0


def counts(results: list[Result]) -> dict[str, int]:
    """Number of results per status, in :data:`STATUSES` order, statuses that occur only."""
    found = {status: sum(r.status == status for r in results) for status in STATUSES}
    return {status: n for status, n in found.items() if n}


def summary_lines(results: list[Result], seconds: float, workers: str,
                  slowest: int = 3) -> list[str]:
    """Two lines for stderr: counts by status with throughput, and the slowest models."""
    done = ", ".join(f"{n} {status}" for status, n in counts(results).items())
    resumed = sum(r.resumed for r in results)
    rate = len(results) / seconds if seconds > 0 else float("inf")
    lines = [f"{len(results)} models in {seconds:.1f} s ({rate:.2f} models/s, {workers}): "
             f"{done}" + (f"; {resumed} from --resume" if resumed else "")]
    ran = sorted((r for r in results if not r.resumed), key=lambda r: -r.seconds)[:slowest]
    if ran:
        lines.append("slowest: " + ", ".join(f"{r.model} {r.seconds:.1f} s" for r in ran))
    return lines
