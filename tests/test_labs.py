"""The lab machinery, proven on every lab:

- ``labs/`` is exactly what ``python -m helpers.labs`` generates from ``solutions/``;
- every solution's committed check outputs pass (nbval re-runs the solutions and compares);
- the untouched lab fails every check with feedback, never a traceback from a check cell;
- every known wrong answer (cell metadata ``sop_wrong_answers``) is caught by its check.
"""
import copy
import re

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import labs
from helpers.checks import FAIL, PASS

SOLUTIONS = sorted(labs.SOLUTIONS.glob("*.ipynb"))
MIN_EXERCISES = 3


def is_check(cell) -> bool:
    return cell.cell_type == "code" and re.search(r"\bchecks\.\w+\.\w+\(", cell.source) is not None


def text_of(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif o.output_type == "error":
            parts.append(f"ERROR {o.ename}: {o.evalue}")
        elif "text/plain" in o.get("data", {}):
            parts.append(o.data["text/plain"])
    return "".join(parts)


def exercises(nb) -> list:
    """[(answer cell index, check cell index)] in order."""
    pairs, pending = [], None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and labs.BEGIN in cell.source:
            pending = i
        elif is_check(cell) and pending is not None:
            pairs.append((pending, i))
            pending = None
    return pairs


def execute(nb, where):
    nb = copy.deepcopy(nb)
    NotebookClient(nb, timeout=300, allow_errors=True, resources={"metadata": {"path": str(where)}}).execute()
    return nb


def test_there_are_labs():
    assert SOLUTIONS, "solutions/ holds no lab notebooks"


def test_labs_are_generated_from_the_solutions():
    assert labs.stale() == [], "run `python -m helpers.labs` and commit labs/"


def test_no_solution_text_in_labs():
    for path in labs.LABS.glob("*.ipynb"):
        assert labs.BEGIN not in path.read_text() and "sop_wrong_answers" not in path.read_text(), path


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_solution_has_enough_exercises_and_they_pass(path):
    nb = nbformat.read(path, as_version=4)
    pairs = exercises(nb)
    assert len(pairs) >= MIN_EXERCISES, f"{path.name} has {len(pairs)} exercises"
    for answer, check in pairs:
        assert nb.cells[answer].metadata.get("sop_wrong_answers"), f"{path.name} cell {answer}: no known wrong answer"
        out = text_of(nb.cells[check])
        assert out.startswith(PASS) and FAIL not in out, f"{path.name} cell {check}: committed output {out!r}"


@pytest.mark.brokers
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_untouched_lab_fails_every_check_with_feedback(path, clusters):
    lab = execute(nbformat.read(labs.lab_path(path), as_version=4), labs.LABS)
    pairs = exercises(nbformat.read(path, as_version=4))
    checks_ = [c for c in lab.cells if is_check(c)]
    assert len(checks_) == len(pairs)
    for cell in checks_:
        out = text_of(cell)
        assert out.startswith(f"{FAIL} Exercise"), f"check cell did not give feedback: {out!r}"
        assert "ERROR" not in out and "could not finish" not in out, out
    for cell in lab.cells:  # outside the learner's own (stub) cells, nothing may raise
        if cell.cell_type == "code" and "YOUR CODE HERE" not in cell.source:
            assert "ERROR" not in text_of(cell), f"cell raised in the untouched lab: {cell.source[:80]!r}"


def wrong_variants(path):
    nb = nbformat.read(path, as_version=4)
    most = max((len(c.metadata.get("sop_wrong_answers", [])) for c in nb.cells), default=0)
    return [(path, k) for k in range(most)]


@pytest.mark.brokers
@pytest.mark.parametrize("path, k", [v for p in SOLUTIONS for v in wrong_variants(p)],
                         ids=lambda v: v.stem if hasattr(v, "stem") else f"wrong{v}")
def test_known_wrong_answers_are_caught(path, k, clusters):
    nb = nbformat.read(path, as_version=4)
    changed = {}
    for answer, check in exercises(nb):
        wrong = nb.cells[answer].metadata.get("sop_wrong_answers", [])
        if k < len(wrong):
            cell = nb.cells[answer]
            region = labs.solution_regions(cell.source)[0]
            cell.source = cell.source.replace(region, wrong[k].rstrip("\n") + "\n", 1)
            changed[check] = wrong[k]
    ran = execute(nb, labs.SOLUTIONS)
    for check, wrong in changed.items():
        out = text_of(ran.cells[check])
        assert out.startswith(f"{FAIL} Exercise"), f"wrong answer not caught:\n{wrong}\ncheck said: {out!r}"
        assert "could not finish" not in out, out
