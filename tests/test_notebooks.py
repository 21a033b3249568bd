"""Every notebook in notebooks/ runs top to bottom in quick mode, and is committed with its outputs.

Quick mode (`HYBRID_NOTEBOOK_QUICK=1`) shrinks each notebook's budgets so the suite stays fast;
`HYBRID_NOTEBOOK_RUNS` sends whatever a notebook writes to a temporary folder. The committed
files are only read: the executed copy is written to the test's tmp_path for inspection.
"""

from __future__ import annotations

from pathlib import Path

import nbclient  # the `test` extra; a missing one fails rather than skipping the notebooks silently
import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 300  # seconds per cell; quick mode needs a small fraction of this


def _images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def test_notebooks_exist():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_has_prose_and_outputs_of_one_full_run(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert any(c.cell_type == "markdown" for c in nb.cells), "a notebook tells a story: add prose"
    assert "HYBRID_NOTEBOOK_QUICK" in "".join(c.source for c in code), \
        "read HYBRID_NOTEBOOK_QUICK in the first code cell so the test suite can run a quick mode"
    counts = [c.execution_count for c in code]
    assert None not in counts and counts == sorted(counts), \
        "commit the notebook executed top to bottom (jupyter execute --inplace, see notebooks/README.md)"
    errors = [out for c in code for out in c.outputs if out.output_type == "error"]
    assert not errors, f"committed outputs contain an error: {errors[0].get('ename')}"
    text = "".join(out.get("text", "") for c in code for out in c.outputs)
    assert "mode: quick" not in text, "committed outputs must come from a full run, not quick mode"
    assert _images(nb) >= 1, "commit the notebook with its figures (embedded PNG outputs)"
    assert path.stat().st_size < 2_000_000, "keep committed notebooks under 2 MB"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_in_quick_mode(path, tmp_path, monkeypatch, data_root):
    monkeypatch.setenv("HYBRID_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("HYBRID_NOTEBOOK_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("HYBRID_DATA_ROOT", str(data_root))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend embeds figures
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    try:
        client.execute()  # CellExecutionError on the first failing cell, with its traceback
    finally:
        nbformat.write(nb, tmp_path / path.name)
    assert _images(nb) >= 1, "the notebook drew no figure in quick mode"
