"""Write a source notebook from a percent-format script (``# %%`` code cells, ``# %% [markdown]`` markdown cells).

The first code cell is tagged ``parameters``; the kernelspec is the project's ``clipguard`` kernel; no outputs.
Usage: python scripts/py_to_notebook.py SOURCE.py NOTEBOOK.ipynb
"""

import re
import sys
from pathlib import Path

import nbformat


def convert(source: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "clipguard", "display_name": "Python (clipguard)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    chunks = re.split(r"^# %%(.*)$", source, flags=re.M)
    first_code = True
    for header, body in zip(chunks[1::2], chunks[2::2]):
        body = body.strip("\n")
        if "[markdown]" in header:
            text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            nb.cells.append(nbformat.v4.new_markdown_cell(text))
        else:
            cell = nbformat.v4.new_code_cell(body)
            if first_code:
                cell.metadata["tags"] = ["parameters"]
                first_code = False
            nb.cells.append(cell)
    return nb


if __name__ == "__main__":
    src, dst = map(Path, sys.argv[1:3])
    nbformat.write(convert(src.read_text()), dst)
    print(f"wrote {dst}")
