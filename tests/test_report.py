"""The report in a real browser: headless Chromium (Debian's package, installed by
scripts/install-test-tool.sh chromium) opens the `snakemake --report` of a completed tiny run, the
charts it holds, and a chart page, offline; the Vega views must have marks, the pages no JavaScript
error, and the screenshots must not be blank. Names and texts that HTML, reStructuredText or Vega would
read as markup show as text, and no script they hold runs."""

from __future__ import annotations

import base64
import re
import subprocess
import textwrap
from dataclasses import dataclass
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import altair as alt
import polars as pl
import pytest
import yaml
from chart_tables import TABLES
from conftest import REPO
from docutils.core import publish_parts
from jinja2 import Environment
from PIL import Image, ImageStat
from snakemake_runs import TINY, copy_run, snakemake, tiny_config

from residual.config.validate import validate_config
from residual.report.charts import save_chart, styled
from residual.report.figures import render

# Console lines Chromium logs for a page (`--enable-logging=stderr`): uncaught exceptions and
# console.error calls name an error; Snakemake's report also logs Tailwind's production warning.
CONSOLE = re.compile(r'INFO:CONSOLE[^\]]*\] "(.*)", source: (\S+)')
ERROR = re.compile(r"\b(Uncaught|\w*Error|error|Failed)\b")
EMBEDDED_CHART = re.compile(r"data:text/html;charset=utf8;filename=([\w.-]+\.html);base64,([A-Za-z0-9+/=]+)")
# Vega's SVG marks every drawn item role="graphics-symbol" with what it is: "bar", "point",
# "rect mark", "line mark", ... and the guides "axis", "legend", "title", "subtitle".
DRAWN_ITEM = re.compile(r'role="graphics-symbol" aria-roledescription="([^"]+)"')
GUIDES = {"axis", "legend", "title", "subtitle"}
# Each would log this to the console if a page ran it.
RAN = "hostile-ran"
# A run name the config accepts (it refuses '<', braces and line breaks) that reStructuredText,
# Snakemake's report and Markdown would each read as markup, or as an HTML tag once unescaped.
HOSTILE_RUN_NAME = (
    f"R&D \"q\" 'a' *b* `c`_ |d| [1]_ \\ $ % # ~ ^ Workflow_ :raw-html:`e` .. raw:: html "
    f"&lt;img src=x onerror=console.log('{RAN}')&gt; javascript:console.log('{RAN}') --> ]]>"
)


@pytest.fixture(scope="session")
def chromium() -> str:
    install = subprocess.run([str(REPO / "scripts/install-test-tool.sh"), "chromium"], capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"no headless Chromium: {install.stderr.strip().splitlines()[-1] if install.stderr.strip() else 'install failed'}")
    return install.stdout.strip().splitlines()[-1]


@dataclass
class Page:
    dom: str
    console: list[str]
    screenshot: Path

    @property
    def errors(self) -> list[str]:
        return [line for line in self.console if ERROR.search(line)]

    @property
    def marks(self) -> int:
        """Items of data marks in the rendered SVG of the Vega views (not axes or legends)."""
        return sum(kind not in GUIDES for kind in DRAWN_ITEM.findall(self.dom))


class Injected(HTMLParser):
    """The elements of a page that could run a text's script: an event handler attribute, or a
    link to RAN's code (a script's own text is not parsed for elements, as in a browser)."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.elements: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if any(name.startswith("on") or (name in ("href", "src") and RAN in (value or "")) for name, value in attrs):
            self.elements.append(self.get_starttag_text() or tag)


def as_text(text: str) -> str:
    """`text` as a text node of a page's serialised DOM (Chromium's --dump-dom)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def open_page(browser: str, path: Path, screenshot: Path) -> Page:
    """Load `path` offline, let its scripts run, and return the DOM, the console and a screenshot."""
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
              "--virtual-time-budget=5000", "--window-size=1400,1000"]  # fmt: skip
    dom = subprocess.run([*common, "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    shot = subprocess.run([*common, f"--screenshot={screenshot}", path.as_uri()], capture_output=True, text=True, timeout=120)
    console = [match.group(1) for match in CONSOLE.finditer(dom.stderr + shot.stderr)]
    assert dom.returncode == 0 and screenshot.exists(), dom.stderr[-2000:] + shot.stderr[-2000:]
    return Page(dom.stdout, console, screenshot)


def assert_not_blank(screenshot: Path) -> None:
    image = Image.open(screenshot).convert("L")
    inked = sum(image.histogram()[:250]) / (image.width * image.height)
    assert ImageStat.Stat(image).stddev[0] > 5 and inked > 0.005, f"{screenshot} is blank ({inked:.2%} of it inked)"


def assert_chart_rendered(page: Page, name: str) -> None:
    assert page.marks > 0, f"{name}: the Vega view drew no data mark"
    assert not page.errors, f"{name}: JavaScript errors {page.errors}"
    assert "Error" not in page.dom.split("</svg>")[-1], f"{name}: vega-embed showed an error"
    assert_not_blank(page.screenshot)


def test_a_saved_chart_renders_in_the_browser(chromium: str, tmp_path: Path) -> None:
    save_chart(render("intrinsic_dimension_heads", TABLES["intrinsic_dimension"](), demo=True), [tmp_path / "chart.html"])
    page = open_page(chromium, tmp_path / "chart.html", tmp_path / "chart.png")
    assert_chart_rendered(page, "intrinsic_dimension_heads")
    assert page.marks == 4 * TABLES["intrinsic_dimension"]().filter(kind="head").height


def test_a_chart_shows_hostile_text_as_text(chromium: str, tmp_path: Path) -> None:
    """Text in a chart's data or title that would end its <script> element is drawn as text."""
    hostile = f"</script><img src=x onerror=console.log('{RAN}')><!--<script>"
    data = pl.DataFrame({"label": [hostile, "plain"], "value": [1.0, 2.0]})
    chart = alt.Chart(data).mark_bar().encode(x=alt.X("label:N", axis=alt.Axis(labelLimit=0)), y="value:Q")
    save_chart(styled(chart, hostile), [tmp_path / "chart.html"])
    page = open_page(chromium, tmp_path / "chart.html", tmp_path / "chart.png")
    assert_chart_rendered(page, "hostile")
    assert not any(RAN in line for line in page.console) and not Injected(page.dom).elements
    assert page.dom.count(as_text(hostile)) >= 2, "the title and the axis label show the text"


def test_the_report_text_reads_config_values_as_text() -> None:
    """The report's description and captions, rendered as Snakemake renders them (Jinja, then
    reStructuredText to HTML, with its link targets appended), show the run's name and its model
    and dataset names as text, whatever markup they hold."""
    config = tiny_config()
    config["run_name"] = HOSTILE_RUN_NAME
    config["models"] = {"m_": config["models"]["clip_tiny"], "Workflow_": config["models"]["dino_tiny"]}
    config["datasets"]["digits__"] = config["datasets"].pop("digits")
    config["reference_dataset"] = "digits__"
    config["analysis"]["id_datasets"] = ["digits__"]
    validate_config(config)
    targets = textwrap.dedent("""

        .. _Workflow: javascript:show_panel('workflow')
    """)
    for template in ("report/workflow.rst", "report/captions/similarity_heads.rst"):
        text = Environment(trim_blocks=True, lstrip_blocks=True).from_string((REPO / template).read_text() + targets)
        body = publish_parts(text.render(snakemake=type("Snakemake", (), {"config": config})), writer="html")["html_body"]
        assert "system-message" not in body and "href=" not in body, body
        assert "<tt class=\"docutils literal\">digits__</tt>" in body
        if template == "report/workflow.rst":
            assert [unescape(strong) for strong in re.findall(r"<strong>(.*?)</strong>", body)][0] == HOSTILE_RUN_NAME, body
            assert "<tt class=\"docutils literal\">m_</tt>, <tt class=\"docutils literal\">Workflow_</tt>" in body


@pytest.fixture(scope="module")
def report(tiny_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make report`'s two commands on a copy of the completed tiny run (the run itself is shared
    read-only), renamed HOSTILE_RUN_NAME: the report's files (runtime table and chart, and every
    table again under the new name), then the report."""
    workdir = tmp_path_factory.mktemp("report") / "run"
    copy_run(tiny_run[0], workdir)
    (workdir / "renamed.yaml").write_text(yaml.safe_dump({"run_name": HOSTILE_RUN_NAME}))
    for args in (["--cores", "2", "report_files"], ["--report", "results/report.html", "report_files"]):
        run = snakemake(workdir, *args, configfiles=[TINY, workdir / "renamed.yaml"], timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir / "results/report.html"


def test_the_report_and_every_chart_it_holds_render_offline(chromium: str, report: Path, tmp_path: Path) -> None:
    page = open_page(chromium, report, tmp_path / "report.png")
    assert not page.errors, f"report: JavaScript errors {page.errors}"
    assert_not_blank(page.screenshot)
    assert 'src="http' not in page.dom and "href=\"http" not in page.dom.split("<body")[0], "the report loads nothing from the network"

    embedded = {name: base64.b64decode(data) for name, data in EMBEDDED_CHART.findall(report.read_text())}
    charts = sorted(path.name for path in (report.parent / "charts").glob("*.html"))
    assert sorted(embedded) == charts and "runtime.html" in charts, "every chart is in the report"
    for name, html in embedded.items():
        assert html == (report.parent / "charts" / name).read_bytes()
        (tmp_path / name).write_bytes(html)
        assert_chart_rendered(open_page(chromium, tmp_path / name, tmp_path / f"{name}.png"), name)

    runtime = (report.parent / "tables/runtime.md").read_text()
    assert "| encode" in runtime and "not the paper's" in runtime


def test_the_report_shows_a_hostile_run_name_as_text(chromium: str, report: Path, tmp_path: Path) -> None:
    """The run's name reaches the report's description and, through the tables' params, a script
    element of Snakemake's: the page shows it as text and runs nothing it holds."""
    page = open_page(chromium, report, tmp_path / "report.png")
    assert not page.errors and not any(RAN in line for line in page.console), page.console
    assert as_text(HOSTILE_RUN_NAME) in page.dom, "the description shows the name as it is"
    assert not Injected(page.dom).elements and "System Message" not in page.dom
    assert pl.read_csv(report.parent / "tables/decomposition.csv")["run"].unique().to_list() == [HOSTILE_RUN_NAME]
