"""The report in a real browser: headless Chromium (Debian's package, installed by
scripts/install-chromium.sh) opens the `snakemake --report` of a completed tiny run, the charts it
holds, and a chart page, offline; the Vega views must have marks, the pages no JavaScript error,
and the screenshots must not be blank."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from chart_tables import TABLES
from conftest import REPO
from PIL import Image, ImageStat

from residual.report.charts import save_chart
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


@pytest.fixture(scope="session")
def chromium() -> str:
    install = subprocess.run([str(REPO / "scripts/install-chromium.sh")], capture_output=True, text=True, timeout=600)
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


@pytest.fixture(scope="module")
def report(tiny_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make report`'s two commands on a copy of the completed tiny run (the run itself is shared
    read-only): the report's files (runtime table and chart), then the report."""
    workdir = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(tiny_run[0], workdir, symlinks=True)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(REPO / "tests/configs/tiny.yaml")]  # fmt: skip
    for args in (["--cores", "2", "report_files"], ["--report", "results/report.html", "report_files"]):
        run = subprocess.run([*command, *args], capture_output=True, text=True, timeout=600, cwd=workdir)
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
