"""Generate ``labs/`` from ``solutions/``: every marked answer becomes a stub.

In a solution notebook, an answer sits between two marker lines::

    ### BEGIN SOLUTION
    partitions = 6
    ### END SOLUTION

The lab gets, in its place, one stub line per name the answer defines at top level, so that
the check cell after it runs and explains what is missing instead of failing with a NameError::

    partitions = ...  # YOUR CODE HERE

A function the answer defines keeps its signature and gets ``...`` as its body (it returns None).
Outputs are cleared; the cell metadata ``sop_wrong_answers`` (known wrong answers, used by the
tests to prove each check catches them) is dropped.

Why not nbgrader's ClearSolutions: it replaces an answer with ``raise NotImplementedError()``,
so the untouched lab stops at the first exercise and every later check cell fails with a
NameError, a traceback rather than feedback. This keeps nbgrader's marker syntax.

    python -m helpers.labs          # write labs/
    python -m helpers.labs --check  # exit 1 when labs/ is stale (CI)
"""
from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
from pathlib import Path

import nbformat

from .config import ROOT

SOLUTIONS, LABS = ROOT / "solutions", ROOT / "labs"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "  # YOUR CODE HERE"
_REGION = re.compile(rf"^([ \t]*){re.escape(BEGIN)}[ \t]*\n(.*?)^[ \t]*{re.escape(END)}[ \t]*\n?", re.M | re.S)


def stub_for(answer: str, indent: str = "") -> str:
    """The stub lines that replace one answer."""
    import textwrap

    tree = ast.parse(textwrap.dedent(answer))
    lines = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body, node.decorator_list = [ast.Expr(ast.Constant(...))], node.decorator_list
            header = ast.unparse(node).splitlines()
            lines += header[:-1] + ["    ..." + STUB]
        else:
            targets = []
            if isinstance(node, ast.Assign):
                targets = [t for tgt in node.targets for t in (tgt.elts if isinstance(tgt, ast.Tuple) else [tgt])]
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and f"{t.id} = ...{STUB}" not in lines:
                    lines.append(f"{t.id} = ...{STUB}")
    if not lines:
        lines = ["..." + STUB]
    return "".join(indent + line + "\n" for line in lines)


def strip_solutions(source: str) -> str:
    return _REGION.sub(lambda m: stub_for(m.group(2), m.group(1)), source)


def solution_regions(source: str) -> list:
    """The answers marked in one cell's source."""
    return [m.group(2) for m in _REGION.finditer(source)]


def make_lab(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    lab = copy.deepcopy(solution)
    for cell in lab.cells:
        cell.metadata.pop("sop_wrong_answers", None)
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs, cell.execution_count = [], None
        elif BEGIN in cell.source:
            cell.source = _REGION.sub("*(your answer here)*\n", cell.source)
    lab.metadata.pop("widgets", None)
    return lab


def lab_path(solution_path: Path) -> Path:
    return LABS / solution_path.name


def expected_labs() -> dict:
    """{lab path: the text it should have}."""
    out = {}
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        out[lab_path(path)] = nbformat.writes(make_lab(nbformat.read(path, as_version=4))) + "\n"
    return out


def stale() -> list:
    """Lab files that are missing, out of date, or have no solution any more."""
    want = expected_labs()
    bad = [p for p, text in want.items() if not p.exists() or p.read_text() != text]
    bad += [p for p in LABS.glob("*.ipynb") if p not in want]
    return bad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.labs", description="generate labs/ from solutions/")
    parser.add_argument("--check", action="store_true", help="exit 1 when labs/ is out of date")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        for p in bad:
            print(f"stale: {p.relative_to(ROOT)}")
        if bad:
            print("run `python -m helpers.labs` and commit labs/.")
        return 1 if bad else 0
    LABS.mkdir(exist_ok=True)
    want = expected_labs()
    for p in LABS.glob("*.ipynb"):
        if p not in want:
            p.unlink()
    for p, text in want.items():
        p.write_text(text)
        print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
