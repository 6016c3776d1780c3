"""docs/ci.md's pipelines are YAML that their CI systems can read, and every `parity` command line in
them is one that parity's CLI accepts (parsed by click as a run would parse it; nothing is run)."""
from __future__ import annotations

import re
import shlex

import click
import pytest
import yaml

from parity.cli import main
from test_docs import ROOT, blocks

PIPELINES = [b for b in blocks(ROOT / "docs" / "ci.md") if b.lang == "yaml"]
# what the CI systems put in place of their variables, as a job would see them
VARIABLES = {r"\$\{\{\s*matrix\.shard\s*\}\}": "2", r"\$CI_NODE_INDEX": "2", r"\$CI_NODE_TOTAL": "3"}


def scripts(node):
    """Every shell line of a pipeline: GitHub's `run` values, GitLab's `script` lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "run" and isinstance(value, str):
                yield from value.splitlines()
            elif key in ("script", "before_script", "after_script") and isinstance(value, list):
                yield from (line for item in value for line in str(item).splitlines())
            else:
                yield from scripts(value)
    elif isinstance(node, list):
        for item in node:
            yield from scripts(item)


def accepted(line: str) -> None:
    """click parses `line`'s arguments as `parity` would: UsageError (or BadParameter) if not."""
    for pattern, value in VARIABLES.items():
        line = re.sub(pattern, value, line)
    name, *args = shlex.split(line)[1:]  # the pipelines give no group option before the command
    command = main.get_command(click.Context(main), name)
    if command is None:
        raise click.UsageError(f"no such command {name!r}")
    command.make_context(name, args)


def test_there_are_two_pipelines():
    assert len(PIPELINES) == 2  # GitHub Actions, GitLab


@pytest.mark.parametrize("block", PIPELINES, ids=lambda b: b.where)
def test_a_pipeline_parses_and_its_parity_lines_are_accepted(block):
    pipeline = yaml.safe_load(block.text)
    assert isinstance(pipeline, dict)
    lines = [line.strip() for line in scripts(pipeline) if line.strip().startswith("parity ")]
    assert any("--junit" in line for line in lines) and any("--shard" in line for line in lines), lines
    for line in lines:
        accepted(line)


def test_a_line_the_cli_would_refuse_is_caught():
    for bad in ("parity verify-all --shard", "parity verify-all --family nope", "parity verify --no-such-flag x.pt",
                "parity frobnicate"):
        with pytest.raises(click.UsageError):
            accepted(bad)
