"""Running the real ``onnxinit`` entry point in-process, as a user's shell would."""

from __future__ import annotations

from onnxinit.cli import main


def run(args, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``onnxinit ARGS`` (one-line errors and exit codes
    included), with pytest's ``capsys`` capturing the output."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, *words: str) -> None:
    """A user error: exit 2, nothing on stdout, one line on stderr naming each of ``words``."""
    assert code == 2 and out == "" and "Traceback" not in err, (code, out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("onnxinit: error:"), err
    assert all(w in err for w in words), err
