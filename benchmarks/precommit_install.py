"""What does the pre-commit hook cost a repository that adopts it?

Runs ``pre-commit run onnxinit-check --all-files`` in a scratch git repository that holds a
small ONNX model twice (``model.onnx``, ``Upper.ONNX``), with a ``.pre-commit-config.yaml`` naming REPO (a local path) at its current
commit and a fresh ``PRE_COMMIT_HOME`` (so the hook's environment is built from nothing, as on a
first run in CI; ``try-repo`` would build it in a temporary store that is gone before it can be
measured), and prints the wall time of that first run (environment install and
one check), the wall time of a second run (check only, environment cached) as the reference, and
the size of the hook's environment on disk with its largest installed distributions.

    python benchmarks/precommit_install.py                 # the repository this file is in
    python benchmarks/precommit_install.py --repo PATH     # another checkout (e.g. an older commit)
    python benchmarks/precommit_install.py --pre-commit /path/to/pre-commit

Needs ``pre-commit`` (``pip install pre-commit``) and network access to the package index. The
time depends on the network and the pip cache (``PIP_NO_CACHE_DIR=1`` is set so every wheel is
downloaded); the size does not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _largest_packages(env: Path, top: int = 5) -> list[tuple[str, int]]:
    """(top-level folder in site-packages, bytes), largest first."""
    site = next(env.glob("lib/python*/site-packages"), None)
    if site is None:
        return []
    sizes = [(p.name, _size(p) if p.is_dir() else p.stat().st_size) for p in site.iterdir()]
    return sorted(sizes, key=lambda item: -item[1])[:top]


def _run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=REPO, help="the onnxinit checkout to try")
    parser.add_argument("--pre-commit", default=shutil.which("pre-commit") or "pre-commit",
                        help="the pre-commit executable")
    args = parser.parse_args()
    model = REPO / "sample_models" / "small_cnn.onnx"
    with tempfile.TemporaryDirectory(prefix="onnxinit-hook-") as tmp:
        work, home = Path(tmp) / "project", Path(tmp) / "home"
        work.mkdir()
        shutil.copy(model, work / "model.onnx")
        shutil.copy(model, work / "Upper.ONNX")  # the hook must match any case of the suffix
        env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PIP_NO_CACHE_DIR": "1"}
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.repo, check=True,
                             capture_output=True, text=True).stdout.strip()
        (work / ".pre-commit-config.yaml").write_text(
            f"repos:\n  - repo: {args.repo.resolve()}\n    rev: {rev}\n"
            "    hooks:\n      - id: onnxinit-check\n")
        for cmd in (["git", "init", "-q"], ["git", "add", "."],
                    ["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "m"]):
            subprocess.run(cmd, cwd=work, check=True)
        run = [args.pre_commit, "run", "onnxinit-check", "--all-files", "--verbose"]
        first, proc = _run(run, work, env)
        second, proc2 = _run(run, work, env)
        envs = [p for p in home.glob("repo*/py_env-*") if p.is_dir()]
        print(f"repository: {args.repo} at {rev}")
        print(f"first run (install + check): {first:.1f} s, exit {proc.returncode}")
        print(f"second run (check only, the reference): {second:.1f} s, exit {proc2.returncode}")
        if not envs:
            print("no hook environment was built; pre-commit said:", file=sys.stderr)
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            sys.exit(1)
        total = sum(_size(e) for e in envs)
        print(f"hook environment: {total / 2**20:.0f} MiB "
              f"(install / check time ratio {first / max(second, 1e-9):.1f}x)")
        for name, size in _largest_packages(envs[0]):
            print(f"  {name:32} {size / 2**20:8.1f} MiB")
        print("hook output (second run):")
        print("  " + "\n  ".join((proc2.stdout + proc2.stderr).strip().splitlines()[-6:]))


if __name__ == "__main__":
    main()
