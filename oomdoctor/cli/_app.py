"""The Typer application every command module registers itself on, and how its help reads.

Help is click's plain formatter, not Typer's rich panels: it rewraps each paragraph of a
docstring to the terminal's width and never cuts an option's help, where the panels kept the
docstring's line breaks (sentences broken mid-way) and cut long words at 80 columns. The command
list shows each command's first sentence whole, wrapped, instead of cutting it at ~45 characters.
"""
from __future__ import annotations

from typing import Optional

import typer
from typer.core import TyperGroup

from .. import __version__


class _Group(TyperGroup):
    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="oomdoctor",
    cls=_Group,
    help="Find why PyTorch runs out of memory, and what to change.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        print(f"oomdoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Optional[bool] = typer.Option(
        None, "--version", "-V", is_eager=True, callback=_print_version, help="Print the version and exit."),
) -> None:
    pass
