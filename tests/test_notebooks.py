"""Every notebook under notebooks/ runs headless from top to bottom; any cell error fails.

Each runs in its own directory (so relative paths like data/... resolve) with the
interpreter running the tests, as CI does.
"""

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
TIMEOUT_S = 300  # per cell; scaling_laws.ipynb takes ~12 s in all on 2 cores


def test_there_are_notebooks():
  assert NOTEBOOKS, "notebooks/ holds no .ipynb"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_executes_without_errors(path):
  nb = nbformat.read(path, as_version=4)
  NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                 resources={"metadata": {"path": str(path.parent)}}).execute()  # raises CellExecutionError
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs), "a notebook here should draw something"
