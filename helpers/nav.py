"""Generate the previous / next / lab links at the foot of every lesson, so they are never
maintained by hand (run after adding or renaming a lesson; a test fails when they are stale).

    python -m helpers.nav           # rewrite the navigation cells
    python -m helpers.nav --check   # exit 1 when a navigation cell is missing or stale
"""
from __future__ import annotations

import argparse
import sys

import nbformat

from .config import ROOT

NOTEBOOKS, LABS = ROOT / "notebooks", ROOT / "labs"
TAG = "sop-nav"


def title(path) -> str:
    nb = nbformat.read(path, as_version=4)
    first = next((c.source for c in nb.cells if c.cell_type == "markdown"), path.stem)
    return first.splitlines()[0].lstrip("# ").strip()


def nav_text(lessons: list, i: int) -> str:
    parts = []
    if i > 0:
        parts.append(f"◀ Previous: [{title(lessons[i - 1])}]({lessons[i - 1].name})")
    lab = LABS / f"{lessons[i].stem}_lab.ipynb"
    if lab.exists():
        parts.append(f"Lab: [{lab.name}](../labs/{lab.name})")
    if i + 1 < len(lessons):
        parts.append(f"Next ▶: [{title(lessons[i + 1])}]({lessons[i + 1].name})")
    return "---\n" + " · ".join(parts) + "\n"


def plan() -> dict:
    """{lesson path: (notebook with the nav cell set, changed?)}"""
    lessons = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    out = {}
    for i, path in enumerate(lessons):
        nb = nbformat.read(path, as_version=4)
        text = nav_text(lessons, i)
        cells = [c for c in nb.cells if TAG in c.metadata.get("tags", [])]
        if cells and cells[0].source == text and nb.cells[-1] is cells[0]:
            out[path] = (nb, False)
            continue
        nb.cells = [c for c in nb.cells if TAG not in c.metadata.get("tags", [])]
        cell = nbformat.v4.new_markdown_cell(text)
        cell.metadata["tags"] = [TAG]
        nb.cells.append(cell)
        out[path] = (nb, True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.nav")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for path, (nb, changed) in plan().items():
        if changed:
            stale.append(path)
            if not args.check:
                nbformat.write(nb, path)
                print(f"updated {path.relative_to(ROOT)}")
    if args.check and stale:
        print("stale navigation: " + ", ".join(p.name for p in stale) + "; run `python -m helpers.nav`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
