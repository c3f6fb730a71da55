"""Every command and sub-command explains itself: help text, readable names, short summaries."""

from __future__ import annotations

import re

import pytest
import typer.main

from research.cli import app


def _commands(group, path: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*path, name), command
        if hasattr(command, "commands"):  # a group (Typer ships its own Click)
            yield from _commands(command, (*path, name))


COMMANDS = list(_commands(typer.main.get_command(app)))


def test_the_tree_has_the_runs_sub_commands():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"runs list", "runs show", "runs rm", "runs cancel", "runs sync", "show", "import", "review"} <= names


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_every_command_has_help(cli, path):
    result = cli(*path, "--help")
    usage = result.stdout.splitlines()[0]
    assert usage.startswith("Usage: ") and f" {' '.join(path)} " in usage  # (the runner's program name varies)
    # Arguments and values in capitals, as users read them, not Typer's {item_id} and <str>.
    assert "{" not in usage and not re.search(r"<[a-z]+>", result.stdout), result.stdout
    described = [line for line in result.stdout.splitlines()[1:] if line.strip()]
    assert described and not described[0].startswith(("Arguments:", "Options:")), "no help text"


@pytest.mark.parametrize("group", [(), ("runs",)], ids=["research", "research runs"])
def test_summaries_in_a_listing_are_not_cut(cli, group):
    listing = cli(*group, "--help").stdout.split("Commands:")[1]
    cut = [line for line in listing.splitlines() if line.rstrip().endswith("...")]
    assert not cut


def test_runs_show_has_its_own_help(cli):
    text = cli("runs", "show", "--help").stdout
    assert text.splitlines()[0].endswith(" runs show [OPTIONS] RUN")


def test_runs_with_an_item_still_lists_its_runs(cli):
    cli("add", "Exp")
    assert cli.json("runs", "exp") == [] == cli.json("runs", "list", "exp")
    assert "no item" in cli("runs", "nothing-here", ok=False).stderr.lower()


def test_version(cli):
    from importlib.metadata import version

    assert cli("--version").stdout.strip() == f"research {version('research')}"
