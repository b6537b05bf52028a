"""Tables as files: each written atomically by its suffix (Parquet, CSV, Markdown, standalone
LaTeX), with the text in Markdown and LaTeX escaped so that it shows as itself. Every stage
writes its tables through here; `residual.report.tables` holds the report's summaries."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import polars as pl
from tabulate import tabulate

from residual.io.atomic import atomic_path

DEMO_NOTE = "Demo run: small models on generated data. These numbers are not the paper's."


def with_keys(table: pl.DataFrame, **keys: str) -> pl.DataFrame:
    """`table` with constant identifying columns (model=..., dataset=...) in front."""
    return table.select(*(pl.lit(value).alias(name) for name, value in keys.items()), pl.all())



def write_table(
    table: pl.DataFrame,
    outputs: Sequence[str | Path],
    title: str = "",
    demo: bool = False,
    markdown: pl.DataFrame | None = None,
    group: str | None = None,
) -> None:
    """Write `table` to each output by its suffix (.parquet, .csv, .md, .tex), atomically. The
    Markdown and LaTeX files show `markdown` instead when given (a summary of a table too long to
    read); `group` names a column whose runs of equal values the LaTeX sets apart (see `to_latex`)."""
    for output in outputs:
        suffix = Path(output).suffix
        with atomic_path(output) as tmp:
            if suffix == ".parquet":
                table.write_parquet(tmp)
            elif suffix == ".csv":
                table.write_csv(tmp)
            elif suffix == ".md":
                tmp.write_text(to_markdown(table if markdown is None else markdown, title, demo))
            elif suffix == ".tex":
                tmp.write_text(to_latex(table if markdown is None else markdown, title, demo, group))
            else:
                raise ValueError(f"no writer for table format {suffix!r} ({output})")


# What GitHub's Markdown reads as markup inside a table cell or a heading (table pipes, code,
# emphasis, strikethrough, math, links, raw HTML, entities); a backslash before each shows it as
# itself. '_' between two letters or digits cannot emphasise, so unit names such as head_0_1 stay
# as they are.
MARKDOWN_MARKUP = re.compile(r"[\\`*~$\[\]<>&|]|(?<![^\W_])_|_(?![^\W_])")


def markdown_escape(text: str) -> str:
    """`text` shown as itself on one line of Markdown (a table cell, a heading): newlines as
    spaces, markup characters backslash-escaped."""
    return MARKDOWN_MARKUP.sub(r"\\\g<0>", " ".join(text.splitlines()))


def markdown_table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """A GitHub Markdown table: numbers to 3 significant digits, nulls empty, anything else as its
    text (`markdown_escape`, and never read as a number: a run called 1e5 stays 1e5)."""
    cells = [[value if value is None or _is_number(value) else markdown_escape(str(value)) for value in row] for row in rows]
    text_columns = [column for column in range(len(headers)) if any(isinstance(row[column], str) for row in cells)]
    return tabulate(
        cells, headers=[markdown_escape(name) for name in headers], tablefmt="github", floatfmt=".3g", disable_numparse=text_columns
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def to_markdown(table: pl.DataFrame, title: str, demo: bool) -> str:
    note = f"> {DEMO_NOTE}\n\n" if demo else ""
    return f"# {markdown_escape(title)}\n\n{note}{markdown_table(table.rows(), table.columns)}\n"


# LaTeX's special characters; '<', '>' and '|' print other glyphs in the default font encoding;
# '[' and '*' at the start of a row would be read as options of the previous row's \\ or \midrule.
LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "|": r"\textbar{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "[": "{[}", "]": "{]}", "*": "{*}"}  # fmt: skip


def latex_escape(text: str) -> str:
    """`text` shown as itself in LaTeX: special characters escaped, newlines as spaces."""
    return "".join(LATEX_SPECIALS.get(char, char) for char in " ".join(text.splitlines()))


def to_latex(table: pl.DataFrame, caption: str, demo: bool, group: str | None = None) -> str:
    """A standalone booktabs table (it compiles on its own with pdflatex): numbers right-aligned
    with 3 significant digits, text left-aligned, nulls as '--', the caption (and the demo note)
    below the rule. With `group`, rows come in blocks of equal values of that column, as in a
    paper's table: the value is printed on a block's first row only, and a midrule parts blocks."""
    numeric = [dtype.is_numeric() for dtype in table.dtypes]
    align = "".join("r" if is_number else "l" for is_number in numeric)

    def cell(value: object, is_number: bool) -> str:
        if value is None:
            return "--"
        if is_number and isinstance(value, float):
            return f"{value:.3g}"
        return latex_escape(str(value))

    header = " & ".join(latex_escape(name) for name in table.columns) + r" \\"
    rows, previous = [], None
    position = None if group is None else table.columns.index(group)
    for row in table.rows():
        cells = [cell(value, is_number) for value, is_number in zip(row, numeric)]
        if position is not None:
            if rows and row[position] != previous:
                rows.append(r"\midrule")
            if row[position] == previous:
                cells[position] = ""
            previous = row[position]
        rows.append(" & ".join(cells) + r" \\")
    note = f" {DEMO_NOTE}" if demo else ""
    return "\n".join(
        [
            r"\documentclass[varwidth=\maxdimen]{standalone}",
            r"\usepackage{booktabs}",
            r"\begin{document}",
            rf"\begin{{tabular}}{{{align}}}",
            r"\toprule",
            header,
            r"\midrule",
            *rows,
            r"\bottomrule",
            r"\end{tabular}",
            r"\par\smallskip",
            latex_escape(caption + note),
            r"\end{document}",
            "",
        ]
    )
