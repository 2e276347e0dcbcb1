"""The book as a course: every part has an exercises page with 2-4 exercises; each states its expected run time at
``cpu``, leaves a cell for the student and has a collapsed solution (``hide-cell``) that asserts what it claims;
the teaching guide lists every exercise; and every solution executes at ``smoke`` (the session's executed book)."""

import ast
import json
import re
from pathlib import Path

import pytest

from clipguard import notebooks

GUIDE = notebooks.BOOK_DIR / "teaching_guide.md"
HEADING = re.compile(r"^## Exercise (\d+)\.(\d+):", re.M)
#: Parts that are not taught and have no exercises, with the reason.
WITHOUT_EXERCISES = {"99_scorecard": "the reproduction scorecard collects the other chapters' claims"}


def _parts() -> list[Path]:
    """Folders of the book's taught parts: those holding a chapter notebook (not only the exercises)."""
    return sorted(folder for folder in notebooks.NOTEBOOK_DIR.iterdir()
                  if folder.is_dir() and folder.name not in WITHOUT_EXERCISES
                  and any(p.name != "exercises.ipynb" for p in folder.glob("*.ipynb")))


def _exercises(path: Path) -> list[dict]:
    """The exercises of a notebook: each ``## Exercise N.M:`` markdown cell with the cells up to the next heading."""
    found = []
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown" and source.lstrip().startswith("#"):
            heading = HEADING.match(source.lstrip())
            found.append({"id": f"{heading[1]}.{heading[2]}", "part": int(heading[1]), "statement": source,
                          "cells": []} if heading else None)
        elif found and found[-1] is not None:
            found[-1]["cells"].append(cell)
    return [e for e in found if e is not None]


def _tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _asserts(source: str) -> int:
    return sum(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(source)))


@pytest.mark.parametrize("part", _parts(), ids=lambda p: p.name)
def test_every_part_has_two_to_four_exercises(part):
    path = part / "exercises.ipynb"
    assert path.exists(), f"{part.name} has no exercises page ({path.name})"
    exercises = _exercises(path)
    assert 2 <= len(exercises) <= 4, f"{path}: {len(exercises)} exercises"
    number = int(part.name.split("_")[0])
    assert [e["part"] for e in exercises] == [number] * len(exercises), f"{path}: exercises not numbered {number}.x"
    assert [e["id"] for e in exercises] == [f"{number}.{i}" for i in range(1, len(exercises) + 1)]


@pytest.mark.parametrize("part", _parts(), ids=lambda p: p.name)
def test_each_exercise_states_its_time_and_has_a_student_cell_and_an_asserting_solution(part):
    path = part / "exercises.ipynb"
    if not path.exists():
        pytest.skip("no exercises page (test_every_part_has_two_to_four_exercises fails)")
    for exercise in _exercises(path):
        where = f"{path.name}, exercise {exercise['id']}"
        assert "Expected run time at `cpu`" in exercise["statement"], f"{where}: no run time at cpu"
        code = [c for c in exercise["cells"] if c["cell_type"] == "code"]
        student = [c for c in code if "student" in _tags(c)]
        solutions = [c for c in code if "hide-cell" in _tags(c)]
        assert len(student) == 1 and not _asserts("".join(student[0]["source"])), f"{where}: student cell"
        assert len(solutions) == 1, f"{where}: needs one solution cell tagged hide-cell"
        source = "".join(solutions[0]["source"])
        assert source.startswith(f"# Solution {exercise['id']}"), f"{where}: solution heading"
        assert _asserts(source) >= 1, f"{where}: the solution asserts nothing"
        prompt = solutions[0]["metadata"].get("mystnb", {}).get("code_prompt_show")
        assert prompt == "Show the solution", f"{where}: the collapsed solution's prompt is {prompt!r}"


def test_teaching_guide_lists_every_exercise_and_is_in_the_book():
    guide = GUIDE.read_text()
    assert "teaching_guide" in (notebooks.BOOK_DIR / "_toc.yml").read_text()
    for part in _parts():
        path = part / "exercises.ipynb"
        for exercise in _exercises(path) if path.exists() else []:
            rows = [line for line in guide.splitlines() if line.startswith(f"| {exercise['id']} ")]
            assert len(rows) == 1, f"teaching guide: no table row for exercise {exercise['id']}"
            assert re.search(r"\d+ s", rows[0]), f"teaching guide: exercise {exercise['id']} has no smoke time"


@pytest.mark.slow
def test_every_solution_executed_at_smoke(executed_book):
    book, _ = executed_book
    for part in _parts():
        executed = book / "executed" / part.name / "exercises.ipynb"
        assert executed.exists(), f"{part.name}: exercises page not executed"
        cells = json.loads(executed.read_text())["cells"]
        solutions = [c for c in cells if c["cell_type"] == "code" and "hide-cell" in _tags(c)
                     and "".join(c["source"]).startswith("# Solution")]
        assert solutions, f"{executed}: no solutions"
        for cell in solutions:
            assert cell.get("execution_count") is not None, f"{executed}: a solution did not run"
            assert not any(o.get("output_type") == "error" for o in cell.get("outputs", [])), executed
