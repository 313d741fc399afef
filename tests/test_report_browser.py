"""The Snakemake HTML report in a real browser (headless Chromium): it renders, shows the
cohort summary and a sample's QC figure. Run by ``make test-report``, which installs
Debian's ``chromium``."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import make_cohort, run_snakemake

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.report,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium (run make test-report)"),
]

# After the app has rendered: open a result category, then the eye (view) button of the
# first result whose row names ``ROW`` — what a person clicks.
CLICKS = """<script>
function byText(text) {
  const all = [...document.querySelectorAll('a,button,span,td')];
  return all.filter(e => e.textContent.trim() === text).pop();
}
window.addEventListener('load', () => setTimeout(() => {
  const category = byText('CATEGORY');
  (category.closest('a') || category).click();
  setTimeout(() => {
    const cell = [...document.querySelectorAll('td')].find(td => td.textContent.includes('ROW'));
    cell.closest('tr').querySelector('a[iconname="eye"]').click();
    document.title = 'opened';
  }, 400);
}, 400));
</script>"""


def _browse(report: Path, category: str, row: str, out: Path) -> tuple[str, Path]:
    """Open the report at one result; return the rendered DOM and a screenshot."""
    html = report.read_text()
    script = CLICKS.replace("CATEGORY", category).replace("ROW", row)
    end = html.rfind("</body>")  # the page's own; the bundled scripts contain the string too
    page = out / f"{row.replace('/', '_')}.html"
    page.write_text(html[:end] + script + html[end:])
    common = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--virtual-time-budget=6000", "--window-size=1400,1000"]  # fmt: skip
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    shot = out / f"{row.replace('/', '_')}.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True,
                   timeout=120, check=True)  # fmt: skip
    return dom, shot


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.float64)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("report")
    make_cohort(workdir / "data", 160, workdir / "samples.tsv")
    (workdir / "config.yaml").write_text("samples: samples.tsv\noutdir: out\n")
    run_snakemake(workdir, "--cores", "2")
    run_snakemake(workdir, "--report", str(workdir / "report.html"))
    return workdir


def test_report_shows_the_cohort_summary(report):
    dom, shot = _browse(report / "report.html", "Cohort summary", "summary.png", report)
    assert "<title>opened</title>" in dom  # the clicks ran in the page
    assert "Cohort summary" in dom and "summary.tsv" in dom
    app = dom[dom.find('<div id="app"') :]
    assert '<img src="data:image/png' in app  # the figure is shown in the page
    pixels = _pixels(shot)
    assert pixels.std() > 20  # not blank
    # the figure itself (its red/green marks) is on the screen, not only the page chrome
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    green = (pixels[..., 1] > 100) & (pixels[..., 0] < 90) & (pixels[..., 2] < 110)
    assert red.sum() + green.sum() > 50


def test_report_shows_a_sample_qc_figure(report):
    dom, shot = _browse(report / "report.html", "Per-sample QC", "ihc_to_fluorescence", report)
    assert "<title>opened</title>" in dom
    assert "ihc_to_fluorescence" in dom
    assert '<img src="data:image/png' in dom[dom.find('<div id="app"') :]
    pixels = _pixels(shot)
    assert pixels.std() > 20
    # the QC figure's magenta/green overlays are on the screen
    magenta = (pixels[..., 0] > 120) & (pixels[..., 2] > 120) & (pixels[..., 1] < 80)
    assert magenta.sum() > 200
