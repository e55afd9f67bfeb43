"""Click building blocks: numbers checked in the user's terms, and options shown in groups."""

from __future__ import annotations

import click

from ..analysis import DEFAULT_MAX_GROWTH, DEFAULT_MIN_VAR
from ..value_range import Range


class Number(click.ParamType):
    """An int or a float that must be finite and in ``limits`` (nan, inf and out-of-range values
    are usage errors that say which values are accepted)."""

    def __init__(self, kind: type, limits: Range | None = None):
        self.kind, self.limits = kind, limits or Range()
        self.name = "integer" if kind is int else "number"

    def get_metavar(self, param, ctx=None) -> str:
        return "INT" if self.kind is int else "FLOAT"

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = self.kind(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not {'an integer' if self.kind is int else 'a number'}",
                          param, ctx)
        if (why := self.limits.problem(float(number))) is not None:
            self.fail(f"{value!r}: {why}", param, ctx)
        return number


class GroupedOption(click.Option):
    """An option listed under a titled group in ``--help``."""

    def __init__(self, *args, group: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group


def threshold_options(fn):
    """--max-growth and --min-var: the thresholds of ``check``'s variance findings (and of the
    flags a report marks)."""
    fn = click.option(
        "--min-var", type=Number(float, Range(gt=0, le=1)), default=DEFAULT_MIN_VAR,
        show_default=True, help="Finding when a tensor's predicted variance falls below this "
                                "many times the input variance.")(fn)
    return click.option(
        "--max-growth", type=Number(float, Range(ge=1)), default=DEFAULT_MAX_GROWTH,
        show_default=True, help="Finding when a tensor's predicted variance exceeds this many "
                                "times the input variance.")(fn)


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists its own options first, then one section per group of
    :class:`GroupedOption`, in the order the groups' first options were declared."""

    def format_options(self, ctx, formatter):
        sections: dict[str | None, list] = {None: []}
        for param in self.get_params(ctx):
            if not isinstance(param, click.Option):
                continue
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "group", None), []).append(record)
        with formatter.section("Options"):
            formatter.write_dl(sections.pop(None))
        for title, records in sections.items():
            with formatter.section(title):
                formatter.write_dl(records)
