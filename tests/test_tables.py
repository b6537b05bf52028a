"""Results tables: every format written from one frame, LaTeX that compiles on its own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import polars as pl
import pytest

from residual.report.tables import DEMO_NOTE, to_latex, write_table

TABLE = pl.DataFrame({"model": ["clip_b", "vit_l"], "dataset": ["cifar_10", "dtd"], "accuracy": [0.91234, None], "k": [3, 12]})


def test_every_format_is_written_from_one_frame(tmp_path: Path) -> None:
    outputs = [tmp_path / f"t.{ext}" for ext in ("parquet", "csv", "md", "tex")]
    write_table(TABLE, outputs, "Accuracy", demo=True)
    assert pl.read_parquet(outputs[0]).equals(TABLE)
    assert pl.read_csv(outputs[1]).equals(TABLE)
    assert DEMO_NOTE in outputs[2].read_text() and DEMO_NOTE in outputs[3].read_text()
    with pytest.raises(ValueError, match=r"no writer for table format '\.xlsx'"):
        write_table(TABLE, [tmp_path / "t.xlsx"])


def test_latex_is_a_balanced_standalone_booktabs_table(tmp_path: Path) -> None:
    """One row per table row, the specials escaped, nulls as '--', numbers right-aligned, braces and
    environments balanced."""
    latex = to_latex(TABLE, "Test accuracy & 100% of #heads_kept", demo=False)
    lines = latex.splitlines()
    assert lines[0].startswith(r"\documentclass") and r"\usepackage{booktabs}" in lines
    assert r"\begin{tabular}{llrr}" in lines
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert body == [r"clip\_b & cifar\_10 & 0.912 & 3 \\", r"vit\_l & dtd & -- & 12 \\"]
    assert r"Test accuracy \& 100\% of \#heads\_kept" in lines
    assert latex.replace(r"\{", "").replace(r"\}", "").count("{") == latex.replace(r"\{", "").replace(r"\}", "").count("}")
    assert latex.count(r"\begin{") == latex.count(r"\end{")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed (the structure is checked above)")
def test_latex_compiles(tmp_path: Path) -> None:
    (tmp_path / "table.tex").write_text(to_latex(TABLE, "Test accuracy & 100% of #heads_kept", demo=True))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "table.tex"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and (tmp_path / "table.pdf").is_file(), run.stdout[-2000:]
