"""The README's commands (and its decision records') still match their tools: every option named exists, every
fenced command parses.

A renamed or removed option otherwise leaves the README telling newcomers to run a command that fails.
The tools' own parsers are used (each `main` builds one and calls `parse_args`), so nothing is run.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the README and the decision records it sends readers to for every command behind a figure
DOCS = ("README.md", "results/README.md", "results/quantum_heads/README.md")
README = "\n".join((ROOT / doc).read_text() for doc in DOCS)
TOOL = re.compile(r"(hybrid|benchmarks)\.\w+")
SEPARATORS = {"&&", "||", ";", "|"}


def commands(line: str) -> list[tuple[str, list[str]]]:
    """(module, argv) of each `... -m hybrid.X args` on one shell line (several when joined by &&)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # prose quoting a fragment with an unmatched quote
        return []
    found = []
    for i, token in enumerate(tokens[:-1]):
        if token == "-m" and TOOL.fullmatch(tokens[i + 1]):
            end = next((j for j in range(i + 2, len(tokens)) if tokens[j] in SEPARATORS), len(tokens))
            found.append((tokens[i + 1], tokens[i + 2:end]))
    return found


FENCED = [c for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S)
          for line in block.replace("\\\n", " ").splitlines() for c in commands(line)]
INLINE = [c for quoted in re.findall(r"`([^`\n]*-m (?:hybrid|benchmarks)\.[^`\n]*)`",
                                     re.sub(r"```.*?```", "", README, flags=re.S))
          for c in commands(quoted)]


class _Parser(Exception):
    """Raised in place of parsing, carrying the parser a tool's `main` built."""


def parser_of(module: str, monkeypatch) -> argparse.ArgumentParser:
    def hand_over(self, args=None, namespace=None):
        raise _Parser(self)

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", hand_over)
        with pytest.raises(_Parser) as caught:
            importlib.import_module(module).main([])
    return caught.value.args[0]


def parsers(monkeypatch) -> dict[str, argparse.ArgumentParser]:
    """One parser per tool the README names (many commands share a tool)."""
    return {module: parser_of(module, monkeypatch) for module in {m for m, _ in FENCED + INLINE}}


def test_the_readme_names_many_commands():
    """Guards the extraction itself: an empty list would make the tests below pass vacuously."""
    assert len(FENCED) >= 40 and len(INLINE) >= 20
    assert {"hybrid.train", "hybrid.evaluate", "hybrid.experiment", "hybrid.bench_backends"} <= {m for m, _ in FENCED}


def test_every_option_the_readme_names_exists(monkeypatch):
    unknown, tools = [], parsers(monkeypatch)
    for module, argv in FENCED + INLINE:
        text = tools[module].format_help()
        unknown += [f"{module} {arg}" for arg in argv if arg.startswith("--")
                    and not re.search(rf"(?<![\w-]){re.escape(arg.split('=')[0])}(?![\w-])", text)]
    assert unknown == []


def test_every_fenced_command_parses(monkeypatch):
    failures, tools = [], parsers(monkeypatch)
    for module, argv in FENCED:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                tools[module].parse_args(argv)
        except SystemExit:
            failures.append(f"{module} {' '.join(argv)}: {errors.getvalue().strip().splitlines()[-1]}")
    assert failures == []


def test_a_drifted_option_is_caught(monkeypatch):
    """The check fails where it should: an option the tool lacks, a value its choices refuse."""
    parser = parser_of("hybrid.train", monkeypatch)
    assert "--no-such-option" not in parser.format_help()
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), pytest.raises(SystemExit):
        parser.parse_args(["--algorithm", "no-such-algorithm"])
    assert "invalid choice: 'no-such-algorithm'" in errors.getvalue()
    assert commands("python -m hybrid.report runs/a && python -m hybrid.train --epochs 2  # done") == [
        ("hybrid.report", ["runs/a"]), ("hybrid.train", ["--epochs", "2"])]
