"""Execute the notebooks in their small version and check what they print.

``FUSION_NOTEBOOK_SMALL=1`` makes each notebook shrink its cohort, epochs and trials.
``OMP_NUM_THREADS=1`` keeps the kernel's torch on one thread. On a 2-core machine shared with
another busy process, a training step of a small 3D DenseNet took 1.3 s with two threads
against 0.01 s with one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip(
    "nbformat", reason="nbformat is a test dependency: pip install -e .[test]"
)
nbclient = pytest.importorskip(
    "nbclient", reason="nbclient is a test dependency: pip install -e .[test]"
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ALL_NOTEBOOKS = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def _execute(name: str, monkeypatch: pytest.MonkeyPatch) -> nbformat.NotebookNode:
    """Run every cell of ``notebooks/<name>`` in a fresh ``python3`` kernel, from its folder."""
    monkeypatch.setenv("FUSION_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, when a cell fails
    return notebook


def _printed(notebook: nbformat.NotebookNode) -> list[str]:
    """Return the text each code cell wrote to stdout, one string per cell."""
    texts = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        texts.append(
            "".join(
                output.get("text", "")
                for output in cell.get("outputs", [])
                if output.get("output_type") == "stream" and output.get("name") == "stdout"
            )
        )
    return texts


def _cell_printing(notebook: nbformat.NotebookNode, marker: str) -> str:
    matches = [text for text in _printed(notebook) if marker in text]
    assert len(matches) == 1, f"expected one cell printing {marker!r}, found {len(matches)}"
    return matches[0]


def _errors(notebook: nbformat.NotebookNode) -> list[str]:
    return [
        f"{output.get('ename')}: {output.get('evalue')}"
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def _has_image(notebook: nbformat.NotebookNode) -> bool:
    return any(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        for output in cell.get("outputs", [])
    )


@pytest.mark.parametrize("name", ALL_NOTEBOOKS)
def test_saved_without_outputs(name: str) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(cell.outputs == [] for cell in code_cells)
    assert all(cell.execution_count is None for cell in code_cells)
    assert notebook.metadata.kernelspec.name == "python3"


def test_notebooks_listed() -> None:
    assert ALL_NOTEBOOKS == ["01_quickstart_demo.ipynb", "02_tcga_lgg.ipynb", "03_benchmark.ipynb"]


@pytest.mark.slow
def test_quickstart_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute("01_quickstart_demo.ipynb", monkeypatch)
    shares = _cell_printing(notebook, "mean |Shapley| share")
    assert _errors(notebook) == []
    assert "true variance share" in shares
    for modality in ("mri", "expression", "clinical"):
        assert modality in shares
    assert "signal features:" in _cell_printing(notebook, "variance shares:")
    assert _has_image(notebook)


@pytest.mark.slow
def test_tcga_notebook_runs(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute("02_tcga_lgg.ipynb", monkeypatch)
    subset = _cell_printing(notebook, "patients,")
    shares = _cell_printing(notebook, "mean |Shapley| share")
    assert _errors(notebook) == []
    assert subset.startswith("36 patients")
    for modality in ("mri", "cnv", "mutation", "clinical"):
        assert modality in shares
    assert _has_image(notebook)


@pytest.mark.slow
def test_benchmark_notebook_runs(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = _execute("03_benchmark.ipynb", monkeypatch)
    subset = _cell_printing(notebook, "with an IDH mutation")
    run = _cell_printing(notebook, "strategies:")
    comparisons = _cell_printing(notebook, "test:")
    assert _errors(notebook) == []
    assert subset.startswith("36 patients")
    # 3 unimodal, 2 early (one is the notebook's own), 4 joint, 5 late and 4 linear strategies.
    assert "strategies: 18" in run
    assert "Nadeau-Bengio corrected resampled t-test" in comparisons
    assert "unimodal:cnv" in _cell_printing(notebook, "cannot predict without a modality")
    assert _has_image(notebook)
