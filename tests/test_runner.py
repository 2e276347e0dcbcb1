"""The papermill runner's page finishing (title first, profile banner, collapsed parameters, no stderr residue),
the mixed-profile check and the end-of-build table, on hand-made notebooks (no kernel needed)."""

import json
import os
from pathlib import Path

import pytest

from clipguard import notebooks


def _page() -> dict:
    return {"metadata": {}, "cells": [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": ["profile = 'cpu'\nseeds = 3\n"],
         "outputs": []},
        {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": ["profile = 'smoke'\n"],
         "outputs": []},
        {"cell_type": "markdown", "metadata": {}, "source": ["# The chapter\n", "text"]},
        {"cell_type": "code", "metadata": {}, "source": ["train()"], "outputs": [
            {"output_type": "stream", "name": "stderr", "text": ["100%|#####| 8/8\n"]},
            {"output_type": "stream", "name": "stdout", "text": ["done\n"]}]},
    ]}


def test_finish_page_puts_title_and_banner_first_and_drops_stderr():
    nb = _page()
    removed = notebooks.finish_page(nb, {"profile": "smoke", "seeds": 1}, {"profile": "'cpu'", "seeds": "3"},
                                    "04_safeclip/safeclip_defence")
    cells = nb["cells"]
    assert "".join(cells[0]["source"]).startswith("# The chapter")
    banner = "".join(cells[1]["source"])
    assert "profile `smoke`" in banner and "`seeds = 1`" in banner and "--only 04_safeclip/safeclip_defence" in banner
    assert removed == ["100%|#####| 8/8\n"]
    outputs = [o for c in cells for o in c.get("outputs", [])]
    assert outputs == [{"output_type": "stream", "name": "stdout", "text": ["done\n"]}]
    tagged = [c for c in cells if {"parameters", "injected-parameters"} & set(c["metadata"].get("tags", []))]
    assert len(tagged) == 2 and all("hide-cell" in c["metadata"]["tags"] for c in tagged)
    assert nb["metadata"]["clipguard"]["profile"] == "smoke"


def test_banner_lists_no_parameter_left_at_its_default():
    nb = _page()
    notebooks.finish_page(nb, {"profile": "cpu", "seeds": 3}, {"profile": "'cpu'", "seeds": "3"}, "x/y")
    assert " with " not in "".join(nb["cells"][1]["source"])


def test_page_profiles_reveal_a_mixed_book(tmp_path):
    for name, profile in [("01_a/one.ipynb", "cpu"), ("02_b/two.ipynb", "smoke")]:
        path = tmp_path / "executed" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"metadata": {"clipguard": {"profile": profile}}, "cells": []}))
    (tmp_path / "executed" / "01_a" / "one.failed.ipynb").write_text("{}")  # a failed page is not a page
    assert notebooks.page_profiles(tmp_path) == {"01_a/one.ipynb": "cpu", "02_b/two.ipynb": "smoke"}


def test_summary_table_totals_seconds_and_runs():
    table = notebooks.summary_table({"a.ipynb": {"seconds": 10.0, "trained": 2, "reused": 1},
                                     "b.ipynb": {"seconds": 5.5, "trained": 0, "reused": 3}})
    total = next(line for line in table.splitlines() if line.startswith("total")).split()
    assert total == ["total", "15.5", "2", "4", "0"]


def test_run_costs_count_each_run_once_per_part_whoever_trained_it():
    results = {"01_a/one.ipynb": {"seconds": 50, "runs": {"r1": 40.0, "r2": 30.0}},
               "01_a/two.ipynb": {"seconds": 5, "runs": {"r2": 30.0}},           # reused from one.ipynb
               "02_b/three.ipynb": {"seconds": 9, "runs": {"r2": 30.0, "r3": 8.0}}}  # trained elsewhere: still its cost
    costs = notebooks.run_costs(results)
    assert costs == {"01_a": {"runs": 2, "seconds": 70.0, "own_runs": 1, "own_seconds": 40.0},
                     "02_b": {"runs": 2, "seconds": 38.0, "own_runs": 1, "own_seconds": 8.0},
                     "all": {"runs": 3, "seconds": 78.0, "own_runs": 3, "own_seconds": 78.0}}
    assert list(costs) == ["01_a", "02_b", "all"]  # the whole book last
    table = notebooks.summary_table(results)
    assert "two.ipynb" in table and next(l for l in table.splitlines() if l.startswith("total")).split()[-1] == "78"


def _notebook(path, body: str) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": notebooks.KERNEL_NAME, "display_name": "Python (clipguard)",
                                 "language": "python"}
    parameters = nbformat.v4.new_code_cell('profile = "cpu"')
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"), parameters, nbformat.v4.new_code_cell(body)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_lanes_run_notebooks_in_parallel_and_keep_the_good_pages_when_one_fails(tmp_path):
    import pytest

    root, out = tmp_path / "notebooks", tmp_path / "executed"
    _notebook(root / "01_a" / "fine.ipynb",  # still running when its neighbour fails
              "import os, time\ntime.sleep(6)\nprint('threads', os.environ.get('OMP_NUM_THREADS'))")
    _notebook(root / "01_a" / "broken.ipynb", "raise ValueError('planted failure')")
    _notebook(root / "02_b" / "later.ipynb", "print('never reached')")
    with pytest.raises(Exception, match="planted failure"):
        notebooks.run_all("smoke", out, root=root, jobs=2)
    assert (out / "01_a" / "fine.ipynb").exists() and (out / "01_a" / "broken.failed.ipynb").exists()
    assert not (out / "01_a" / "broken.ipynb").exists()
    page = json.loads((out / "01_a" / "fine.ipynb").read_text())
    printed = "".join(o.get("text", "") if isinstance(o.get("text"), str) else "".join(o.get("text", []))
                      for c in page["cells"] for o in c.get("outputs", []))
    assert f"threads {max(1, (os.cpu_count() or 1) // 2)}" in printed  # the cores shared between the two kernels
    assert not (out / "02_b" / "later.ipynb").exists()  # nothing starts after a failure

    ok = tmp_path / "ok"
    _notebook(ok / "01_a" / "one.ipynb", "import time\ntime.sleep(3)\nopen('../../one.done', 'w').close()")
    _notebook(ok / "01_a" / "two.ipynb", "print(2)")
    # the summary part starts only once every page before it has finished, though a lane is free earlier
    _notebook(ok / "99_summary" / "card.ipynb", "import os\nassert os.path.exists('../../one.done')")
    timings = notebooks.run_all("smoke", tmp_path / "ok_out", root=ok, jobs=2)
    assert set(timings) == {"01_a/one.ipynb", "01_a/two.ipynb", "99_summary/card.ipynb"}
    summary = json.loads((tmp_path / "ok_out" / "timings-smoke.json").read_text())
    assert summary["jobs"] == 2 and summary["wall_seconds"] > 0


def test_lanes_take_the_longest_notebooks_first_and_summary_parts_last(tmp_path):
    root, out = tmp_path / "notebooks", tmp_path / "executed"
    names = ["01_a/short.ipynb", "01_a/unmeasured.ipynb", "02_b/long.ipynb", "99_card/card.ipynb"]
    for name in names:
        _notebook(root / name, "print(1)")
    (root / "timings-cpu.json").write_text(json.dumps({"seconds": {"01_a/short.ipynb": 10, "02_b/long.ipynb": 50,
                                                                    "99_card/card.ipynb": 900}}))
    out.mkdir()  # this machine's last build overrides the committed times
    (out / "timings-cpu.json").write_text(json.dumps({"seconds": {"01_a/short.ipynb": 70}}))
    seconds = notebooks.expected_seconds("cpu", root, out)
    assert seconds == {"01_a/short.ipynb": 70, "02_b/long.ipynb": 50, "99_card/card.ipynb": 900}
    order = notebooks.longest_first(notebooks.discover(root), root, seconds)
    assert [str(p.relative_to(root)) for p in order] == ["01_a/unmeasured.ipynb", "01_a/short.ipynb",
                                                          "02_b/long.ipynb", "99_card/card.ipynb"]
    assert notebooks.longest_first(notebooks.discover(root), root, {}) == notebooks.discover(root)


def test_time_left_spreads_the_remaining_work_over_the_lanes():
    expected = {"a": 100.0, "b": 60.0, "c": 40.0, "long": 500.0}
    # waiting b + c (100 s) and what is left of a (100 - 30 = 70 s), over two lanes
    assert notebooks.time_left(expected, ["b", "c"], {"a": 30.0}, jobs=2) == pytest.approx(85.0)
    # one long notebook still running bounds the estimate from below
    assert notebooks.time_left(expected, [], {"long": 100.0, "a": 10.0}, jobs=2) == pytest.approx(400.0)
    assert notebooks.time_left(expected, [], {"a": 150.0}, jobs=1) == 0.0  # over its time: nothing left
    assert notebooks.time_left(expected, ["new"], {}, jobs=2) is None  # no earlier time: no estimate


def test_run_lines_name_the_notebook_with_its_part(tmp_path, capsys):
    """Every chapter has an exercises page: the run lines say whose."""
    label = notebooks.progress_label(Path("notebooks/06_cleanclip/exercises.ipynb"))
    assert label == "06_cleanclip/exercises"
    tail = notebooks._ProgressTail(tmp_path / "log.jsonl", label)
    tail._print({"status": "trained", "run": "abc", "cost": 3.0, "what": "clip, clean, seed 0", "seconds": 3.2})
    assert "[06_cleanclip/exercises] clip, clean, seed 0 — trained in 3 s" in capsys.readouterr().out
    assert tail.runs == {"abc": 3.0} and tail.counts["trained"] == 1
