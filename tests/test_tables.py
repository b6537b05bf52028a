"""Results tables: every format written from one frame, LaTeX that compiles on its own."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from markdown_it import MarkdownIt

from residual.io.tables import DEMO_NOTE, latex_escape, to_latex, to_markdown, write_table

TABLE = pl.DataFrame({"model": ["clip_b", "vit_l"], "dataset": ["cifar_10", "dtd"], "accuracy": [0.91234, None], "k": [3, 12]})
# Texts a run name or a dictionary may hold that Markdown, HTML or LaTeX would read as markup.
HOSTILE = [
    "a|b\nc",
    "x </script><img src=x onerror=alert(1)><!--",
    "*b* `c` [link](javascript:alert(1)) &lt; $x$ ~~s~~ a\\|b _i_",
    "__init__ head_0_1 residual_fine",
    "1e5",
    "[1] \\ & % # { } ~ ^ < > *",
]


class Cells(HTMLParser):
    """The tags of an HTML page, and the text of each of its table cells and headings."""

    TEXT = ("td", "th", "h1")

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.texts: list[str] = []
        self.inside = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        if tag in self.TEXT:
            self.texts.append("")
            self.inside = True

    def handle_endtag(self, tag: str) -> None:
        self.inside = self.inside and tag not in self.TEXT

    def handle_data(self, data: str) -> None:
        if self.inside:
            self.texts[-1] += data


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


def test_markdown_shows_every_text_as_itself() -> None:
    """Rendered as GitHub renders Markdown (CommonMark, tables, strikethrough), each cell and the
    title hold exactly their text on one line: no element but the table's, no number reformatted."""
    table = pl.DataFrame({"text": HOSTILE, "k": list(range(len(HOSTILE)))})
    markdown = to_markdown(table, "Texts | *all* <b>", demo=False)
    page = Cells(MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown))
    assert page.tags == {"h1", "table", "thead", "tbody", "tr", "th", "td"}, markdown
    assert page.texts[0] == "Texts | *all* <b>" and page.texts[1:3] == ["text", "k"]
    assert page.texts[3::2] == [" ".join(text.splitlines()) for text in HOSTILE], markdown


def test_latex_escapes_every_character_it_would_misread() -> None:
    """What is left of an escaped text once its escapes are taken out holds none of the characters
    LaTeX reads as markup, prints as other glyphs, or takes as a row option ('[' and '*' after \\\\)."""
    escaped = latex_escape(HOSTILE[-1] + " " + HOSTILE[2])
    rest = escaped
    for escape in (r"\textbackslash{}", r"\textasciitilde{}", r"\textasciicircum{}", r"\textbar{}", r"\textless{}", r"\textgreater{}"):
        rest = rest.replace(escape, "")
    for escape in (r"\&", r"\%", r"\$", r"\#", r"\_", r"\{", r"\}", "{[}", "{]}", "{*}"):
        rest = rest.replace(escape, "")
    assert not set(rest) & set("\\&%$#_{}~^|<>[]*"), escaped


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed: scripts/install-test-tool.sh pdflatex (make test runs it)")
@pytest.mark.parametrize(
    ("table", "group"),
    [
        (TABLE, None),
        (pl.DataFrame({"text": HOSTILE[::-1], "k": list(range(len(HOSTILE)))}), None),
        (pl.concat([TABLE, TABLE]).sort("model"), "model"),  # the main table's blocks: blank cells and midrules between them
    ],
    ids=["plain", "hostile", "grouped"],
)
def test_latex_compiles(tmp_path: Path, table: pl.DataFrame, group: str | None) -> None:
    (tmp_path / "table.tex").write_text(to_latex(table, "Test accuracy & 100% of #heads_kept", demo=True, group=group))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "table.tex"], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and (tmp_path / "table.pdf").is_file(), run.stdout[-2000:]
