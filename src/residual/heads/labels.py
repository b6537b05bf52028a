"""The head scores' names and the paper's column labels, without the modules that compute them
(torch-free: the head tables and charts read them)."""

SCORES = {"task_conditioned": "U|T", "unsupervised": "U", "supervised": "S", "random": "random"}  # name -> paper label
ALL_HEADS, ALL_UNITS = "all_heads", "all_units"
LABELS = {**SCORES, ALL_HEADS: "H", ALL_UNITS: "B"}  # score name -> the paper's column label


def fraction_label(fraction: float | None) -> str:
    """How a selection's size reads in titles and tables: a percentage of the heads, or the single best head."""
    return "1 head" if fraction is None else f"{100 * fraction:g}%"
