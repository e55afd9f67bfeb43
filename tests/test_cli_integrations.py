"""The CI-gate integrations and the install promises: the pre-commit hook, the GitHub Actions
snippet, Git LFS pointers, the onnxruntime builds, and the committed fixtures."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .cli import run
from .samples import SAMPLES, sample

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
LFS_POINTER = ("version https://git-lfs.github.com/spec/v1\n"
               "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
               "size 12345\n")


def _hook() -> dict:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    return hook


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.DOTALL)


def test_pre_commit_hook_matches_onnx_in_any_case_and_states_its_python():
    """Item 19: `files: \\.onnx$` skipped Model.ONNX; the hook names its minimum Python, the
    same as the package's requires-python."""
    hook = _hook()
    pattern = re.compile(hook["files"])  # pre-commit uses Python's re
    assert all(pattern.search(name) for name in ("a.onnx", "models/B.ONNX", "c.Onnx"))
    assert not any(pattern.search(name) for name in ("a.onnx.txt", "onnx", "a.pb"))
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*(3\.\d+)", requires).group(1)
    assert f"Python >= {minimum}" in hook["description"]
    assert f"Python {minimum} or\nlater" in README or f"Python {minimum} or later" in README


def test_hook_environment_is_cpu_only_and_gpu_is_one_extra_away():
    """Item 20: the hook's environment was 600 MB because the default dependency on Linux
    x86_64 was onnxruntime-gpu. No onnxruntime build is a core dependency; the hook installs
    the CPU one; the cpu and gpu extras each name exactly one build."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("onnxruntime")]
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["cpu"]] == ["onnxruntime"]
    assert [d.split(">")[0] for d in extras["gpu"]] == ["onnxruntime-gpu"]
    for name, deps in extras.items():
        builds = {d.split(">")[0].split(";")[0].strip() for d in deps} & {"onnxruntime",
                                                                         "onnxruntime-gpu"}
        assert name in ("cpu", "gpu") or not builds, f"extra {name} pulls in {builds}"
    assert [d.split(">")[0] for d in _hook()["additional_dependencies"]] == ["onnxruntime"]


def _run_without(blocked: str, args: list[str]) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where importing ``blocked`` fails, as if not installed."""
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            "from onnxinit.cli import main\n"
            f"main({[str(a) for a in args]!r})")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, check=False)


def test_missing_onnxruntime_is_one_line_naming_the_install():
    proc = _run_without("onnxruntime", ["analyze", sample("small_cnn"), "--measure"])
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert "onnxruntime is not installed" in line and "onnxinit[cpu]" in line


def test_both_onnxruntime_builds_installed_is_refused(monkeypatch, capsys):
    """pip cannot stop onnxinit[cpu] and onnxinit[gpu] from being installed one after the
    other; both builds then write one package. That is refused, with the fix."""
    from onnxinit import runtime

    monkeypatch.setattr(runtime, "_installed", lambda name: True)
    runtime.require_onnxruntime.cache_clear()
    try:
        code, out, err = run(["analyze", sample("small_cnn"), "--measure"], capsys)
    finally:
        runtime.require_onnxruntime.cache_clear()
    assert code == 2 and out == "" and "pip uninstall -y onnxruntime onnxruntime-gpu" in err


def test_git_lfs_pointer_is_named_as_such(tmp_path, capsys):
    """Item 19: a pointer file gave "Wire format was corrupt"."""
    pointer = tmp_path / "model.onnx"
    pointer.write_text(LFS_POINTER)
    for command in (["check"], ["analyze"], ["rescale"]):
        code, _, err = run([*command, pointer], capsys)
        assert code == 2 and "this is a Git LFS pointer" in err and "fetch the file" in err
        assert len(err.strip().splitlines()) == 1


def test_readme_actions_snippet_can_work():
    """Item 19: the snippet installed a package that is not on the index, had no permission to
    upload SARIF, used the deprecated upload-sarif@v3 and no LFS."""
    (workflow,) = [yaml.safe_load(b) for b in _yaml_blocks() if "runs-on" in b]
    assert workflow["permissions"]["security-events"] == "write"
    steps = workflow["jobs"]["check"]["steps"]
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["lfs"] is True
    install = next(s["run"] for s in steps if "pip install" in s.get("run", ""))
    assert re.search(r'"onnxinit\[cpu\] @ git\+https://github\.com/[^"]+/onnxinit@[^"]+"', install)
    text = next(b for b in _yaml_blocks() if "runs-on" in b)
    assert "upload-sarif@v4" in text and "upload-sarif@v3" not in text
    assert "onnxinit check models/*.onnx --format github" in text


def test_readme_pre_commit_rev_exists_or_is_a_placeholder():
    """Item 16: the example used rev: v0.1.0, a tag the repository does not have."""
    (config,) = [yaml.safe_load(b) for b in _yaml_blocks() if "repos:" in b]
    rev = config["repos"][0]["rev"]
    if not rev.startswith("<"):
        proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                              cwd=REPO, capture_output=True, check=False)
        assert proc.returncode == 0, f"README pre-commit rev {rev!r} is no commit or tag here"
    assert config["repos"][0]["hooks"][0]["id"] == _hook()["id"]


def test_batch_size_help_speaks_of_each_commands_own_use(capsys):
    """Item 16: --batch-size mentioned --measure on commands that have none; --data showed the
    metavar TEXT."""
    for command in ("analyze", "check", "rescale"):
        code, out, _ = run([command, "--help"], capsys)
        assert code == 0 and "--batch-size" in out
        assert ("--measure" in out) == (command == "analyze")
    # and --data shows what it takes, not TEXT
    out = run(["rescale", "--help"], capsys)[1]
    assert "--data FILE.npz" in out and "--loss-output NAME" in out


def _skips_on_missing_files(path: Path) -> list[int]:
    """Lines of ``pytest.skip(...)`` / ``skipif(...)`` calls conditioned on a file existing."""
    lines = []
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("skip", "skipif"):
            text = ast.unparse(node)
            if ".exists()" in text or "is_file()" in text or "not built" in text:
                lines.append(node.lineno)
        if isinstance(node, ast.If) and ".exists()" in ast.unparse(node.test):
            calls = [n for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Call)]
            if any(getattr(c.func, "attr", "") == "skip" for c in calls):
                lines.append(node.lineno)
    return lines


def test_missing_committed_fixture_fails_instead_of_skipping():
    """Item 21: whole test modules skipped when a committed sample model was missing."""
    offenders = {str(p.relative_to(REPO)): lines for p in (REPO / "tests").rglob("test_*.py")
                 if (lines := _skips_on_missing_files(p))}
    assert offenders == {}
    assert sorted(p.stem for p in SAMPLES.glob("*.onnx")) == [
        "resnet20_bn", "resnet20_nobn", "small_cnn", "tanh_mlp50", "transformer_postln"]
    with pytest.raises(pytest.fail.Exception, match="committed fixture"):
        sample("not_a_sample")
