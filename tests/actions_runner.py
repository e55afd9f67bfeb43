"""How a GitHub Actions runner reads a job's log lines as workflow commands, written from the
runner's parser (actions/runner, src/Runner.Common/ActionCommand.cs: ``TryParseV2`` for
``::command k=v,k=v::data`` at the start of a line after leading white space, then the legacy
``TryParse`` for ``##[command k=v;k=v]data`` anywhere in a line), so tests can check what a
workflow would do with onnxinit's output."""

from __future__ import annotations

from dataclasses import dataclass

# the commands the runner registers (ActionCommandManager and its extensions)
COMMANDS = {"add-mask", "add-matcher", "add-path", "debug", "echo", "endgroup", "error", "group",
            "notice", "remove-matcher", "save-state", "set-env", "set-output", "stop-commands",
            "warning", "section", "command"}

_DATA = (("%0D", "\r"), ("%0A", "\n"), ("%25", "%"))
_PROPERTY = (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%"))
_LEGACY = (("%3B", ";"), ("%0D", "\r"), ("%0A", "\n"), ("%5D", "]"), ("%25", "%"))


def _unescape(text: str, mappings) -> str:
    for escaped, raw in mappings:
        text = text.replace(escaped, raw)
    return text


@dataclass
class Command:
    name: str
    properties: dict[str, str]
    data: str
    legacy: bool


def _parse_v2(line: str) -> Command | None:
    message = line.lstrip()
    if not message.startswith("::"):
        return None
    end = message.find("::", 2)
    if end < 0:
        return None
    info = message[2:end]
    name, _, props = info.partition(" ")
    if name not in COMMANDS:
        return None
    properties = {}
    for prop in filter(None, props.strip().split(",")):
        key, sep, value = prop.partition("=")
        if sep and key and value:
            properties[key] = _unescape(value, _PROPERTY)
    return Command(name, properties, _unescape(message[end + 2:], _DATA), legacy=False)


def _parse_legacy(line: str) -> Command | None:
    start = line.find("##[")
    if start < 0:
        return None
    close = line.find("]", start)
    if close < 0:
        return None
    info = line[start + 3:close]
    name, _, props = info.partition(" ")
    if name not in COMMANDS:
        return None
    properties = {}
    for prop in filter(None, props.split(";")):
        key, sep, value = prop.partition("=")
        if sep and key and value:
            properties[key] = _unescape(value, _LEGACY)
    return Command(name, properties, _unescape(line[close + 1:], _LEGACY), legacy=True)


def parse_line(line: str) -> Command | None:
    """The workflow command the runner reads in one log line, if any."""
    return _parse_v2(line) or _parse_legacy(line)


def commands(log: str) -> list[Command]:
    """Every workflow command in a log (lines split as the runner splits its output)."""
    return [c for line in log.splitlines() if (c := parse_line(line)) is not None]
