"""Project-level checks: dependency lists in sync, notebooks well-formed, README commands present."""

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_deps = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(map(str.strip, pyproject)) == sorted(map(str.strip, pip_deps))
    assert {_name(r) for r in pyproject} == {_name(r) for r in pip_deps}


def test_source_notebooks_are_clean_and_use_the_project_kernel():
    notebooks = sorted((ROOT / "notebooks").rglob("*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "clipguard", path
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert not any(c.get("outputs") for c in code), f"{path} carries outputs"
        assert "parameters" in code[0]["metadata"].get("tags", []), f"{path}: first code cell is not 'parameters'"
        params = "".join(code[0]["source"])
        assert re.search(r'^profile = "(smoke|cpu|gpu)"', params, re.M), f"{path}: no profile parameter"
        assert "tqdm.auto" not in "".join("".join(c["source"]) for c in code), f"{path} uses tqdm.auto"


def test_every_executed_notebook_is_in_the_table_of_contents():
    toc = (ROOT / "book" / "_toc.yml").read_text()
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        entry = "executed/" + str(path.relative_to(ROOT / "notebooks").with_suffix(""))
        assert entry in toc, f"{entry} missing from book/_toc.yml"


def test_readme_has_the_two_commands_and_ci_calls_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make book" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
