"""The code's shape: no import cycle among the project's modules, small functions and modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hybrid", "backends")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 450


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports a.b, and a.b.c where c is a module
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "hybrid.train" in graph and "hybrid.evaluate" not in graph["hybrid.train"]
    assert cycles(graph) == []


def test_config_imports_nothing_from_the_project():
    assert import_graph()["hybrid.config"] == set()


@pytest.mark.parametrize("name", sorted(module_files()))
def test_modules_and_functions_are_small(name):
    path = module_files()[name]
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{path} has {len(text.splitlines())} lines"
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path}: functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_private_name_is_imported_across_modules():
    offenders = []
    for name, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in PACKAGES:
                offenders += [f"{name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


CONSOLE_SCRIPTS = {"hybrid-train": "hybrid.train", "hybrid-evaluate": "hybrid.evaluate",
                   "hybrid-experiment": "hybrid.studies.experiment", "hybrid-report": "hybrid.studies.report"}
README_TOOLS = ("train", "evaluate", "experiment", "report", "design", "subgroups", "tta_check", "bench_backends")

# Runs each installed console script file and each `python -m hybrid.<tool>` as __main__ with --help, all in one
# interpreter: one process per tool spent about 4 s each importing torch again.
_HELP_RUNNER = """
import contextlib, io, json, runpy, sys
answers = {}
for kind, target in json.loads(sys.argv[1]):
    sys.argv = [target, "--help"]
    printed, code = io.StringIO(), None
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            runpy.run_path(target, run_name="__main__") if kind == "script" else runpy.run_module(
                target, run_name="__main__", alter_sys=True)
    except SystemExit as exit:
        code = exit.code
    except Exception as error:  # this tool's answer, not every tool's
        code = f"{type(error).__name__}: {error}"
    answers[target] = {"code": code, "output": printed.getvalue()[:2000]}
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def help_answers() -> dict:
    import json
    import subprocess
    import sys

    targets = [("script", str(Path(sys.executable).parent / s)) for s in sorted(CONSOLE_SCRIPTS)]
    targets += [("module", f"hybrid.{tool}") for tool in README_TOOLS]
    done = subprocess.run([sys.executable, "-c", _HELP_RUNNER, json.dumps(targets)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", sorted(CONSOLE_SCRIPTS))
def test_console_scripts_are_installed_and_answer_help(script, help_answers):
    import sys
    from importlib.metadata import entry_points

    declared = {ep.name: ep.value for ep in entry_points(group="console_scripts") if ep.name.startswith("hybrid-")}
    assert declared.get(script) == f"{CONSOLE_SCRIPTS[script]}:main", "reinstall with pip install -e . after setup.cfg"
    answer = help_answers[str(Path(sys.executable).parent / script)]
    assert answer["code"] == 0 and "usage:" in answer["output"], answer["output"]


@pytest.mark.parametrize("tool", README_TOOLS)
def test_every_python_m_tool_of_the_readme_still_answers(tool, help_answers):
    answer = help_answers[f"hybrid.{tool}"]
    assert answer["code"] == 0 and "usage:" in answer["output"], answer["output"]
    text = " ".join(answer["output"].split())  # argparse's wrapping undone
    assert not re.search(r"\(default: [^)]*\) \(default:", text), "a default said twice"
