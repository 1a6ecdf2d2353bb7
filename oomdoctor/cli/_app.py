"""The Typer application every command module registers itself on."""
from __future__ import annotations

import typer

app = typer.Typer(
    name="oomdoctor",
    help="Find why PyTorch runs out of memory, and what to change.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
