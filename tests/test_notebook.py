"""The tuning notebook runs top to bottom (quick mode: seeded subset, keyword path) and draws its
figures, on the bundled catalog and on a catalog and labelled file of one's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import matcher
from matcher.tuning import load_labelled

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "tuning.ipynb"
OWN_TASKS = ("contract-key-fields", "invoice-extraction", "receipt-extraction", "sentiment-analysis",
             "support-ticket-triage", "translation")


def own_catalog_and_labels(folder: Path) -> dict[str, str]:
    """Six tasks of the bundled catalog as a catalog file of their own, with their labelled tuning
    rows and the out-of-scope ones: the environment the notebook reads them from."""
    records = [matcher.default_catalog().get(task_id).to_dict(examples_n=None) for task_id in OWN_TASKS]
    catalog = folder / "own-catalog.json"
    catalog.write_text(json.dumps(records), encoding="utf-8")
    rows = [(text, label) for text, label in load_labelled(REPO / "corpora" / "queries" / "tune.jsonl")
            if label is None or label in OWN_TASKS]
    labelled = folder / "own-labels.jsonl"
    labelled.write_text("".join(json.dumps({"text": t, "task_id": g}) + "\n" for t, g in rows), encoding="utf-8")
    return {"NOTEBOOK_CATALOG": str(catalog), "NOTEBOOK_TUNE": str(labelled)}


@pytest.mark.slow
@pytest.mark.parametrize("own", [False, True], ids=["bundled catalog", "own catalog and labels"])
def test_tuning_notebook_runs_in_quick_mode(own: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name, value in (own_catalog_and_labels(tmp_path) if own else {}).items():
        monkeypatch.setenv(name, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code_cells), "every code cell ran"
    outputs = [o for c in code_cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 4, f"expected the four plots, got {len(figures)} figures"
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "quick=True" in printed
    assert (f"{len(OWN_TASKS)} tasks;" in printed) is own
    assert (f"catalog={tmp_path / 'own-catalog.json'}" in printed) is own
