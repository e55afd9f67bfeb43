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
