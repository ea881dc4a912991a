"""report.html: self-contained, escaped, and renders in a real headless Chromium."""

import json
import re
import shutil
from pathlib import Path

import pytest

from callpath.analysis.html_report import render_html, write_html
from callpath.analysis.readers import read_spec
from callpath.analysis.report import write_report
from callpath.analysis.trace import read_trace

FIXTURE = Path(__file__).parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
SPECS = Path(__file__).resolve().parent.parent / "specs"


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("html")
    trace = read_trace(FIXTURE)
    specs = [read_spec(SPECS / n) for n in ("macvlan-newlink-xmit.txt", "veth-macvlan-notes.md")]
    write_report(trace, specs, out)
    return out


def test_report_json_has_packets_per_path_and_html_beside_it(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    for p in report["paths"]:
        b = p["packets"]
        assert {"count", "partial", "p50_ns", "p90_ns", "p99_ns", "max_ns", "hops"} <= set(b)
        for h in b["hops"]:
            assert {"from", "to", "count", "p50_ns", "p99_ns"} <= set(h)
    xmit = next(p for p in report["paths"] if p["name"].startswith("macvlan_start_xmit"))
    assert xmit["packets"]["count"] > 0 and (report_dir / xmit["packets"]["plots"]["latency"]).is_file()
    md = (report_dir / "report.md").read_text()
    assert "## Packets along each path" in md and "followed end to end" in md
    assert (report_dir / "report.html").is_file()


def test_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html)
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert "data:image/png;base64," in html


def test_document_and_kernel_text_is_escaped(tmp_path):
    evil = "<script>alert(1)</script> & \"q\""
    report = {"kernel": evil, "where": evil, "mechanism": "kprobe", "events": 1, "lost": 0, "latency": [],
              "packet_identity": {"how": evil},
              "paths": [{"number": "1", "name": evil, "source": evil, "trigger": evil,
                         "summary": {"observed": 1, "checkable": 1},
                         "steps": [{"number": "1", "text": evil, "verdict": "observed", "count": 1, "detail": evil,
                                    "evidence": [evil]}],
                         "packets": {"count": 1, "partial": 1, "entry_only": 0, "cross_thread": 0,
                                     "partial_reasons": {evil: 1}, "p50_ns": 5, "p90_ns": 5, "p99_ns": 5, "max_ns": 5,
                                     "hops": [{"from": evil, "to": evil, "count": 1, "p50_ns": 5, "p99_ns": 5}], "next": [],
                                     "plots": {"latency": "../../etc/passwd"},
                                     "median": {"packet": 1, "latency_ns": 5, "calls": [
                                         {"function": evil, "step": evil, "offset_ns": 0, "duration_ns": 5, "tid": 1,
                                          "cpu": 0, "ifindex": 2, "netns": 3, "comm": evil, "via": "arg"}]}}}]}
    html = render_html(report, tmp_path)
    assert "<script>" not in html and "&lt;script&gt;" in html


def _chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_renders_in_headless_chromium_without_console_errors(report_dir):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium chromium-driver; `make setup` does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (Debian: python3-selenium)")
    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.skip("chromedriver not installed (Debian: chromium-driver)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        driver.get((report_dir / "report.html").resolve().as_uri())
        report = json.loads((report_dir / "report.json").read_text())
        sections = driver.find_elements(By.CSS_SELECTOR, "section.path")
        assert len(sections) == len(report["paths"])
        assert sections[0].find_element(By.TAG_NAME, "h2").text.startswith(report["paths"][0]["number"])
        assert len(driver.find_elements(By.CSS_SELECTOR, "#summary tr")) == len(report["paths"]) + 1
        imgs = driver.find_elements(By.TAG_NAME, "img")
        assert imgs and all(driver.execute_script("return arguments[0].naturalWidth", i) > 0 for i in imgs)
        assert driver.find_elements(By.CSS_SELECTOR, ".wf span.doc")  # a waterfall was drawn
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()


def test_write_html_returns_the_file(tmp_path):
    report = {"kernel": "k", "paths": [], "latency": []}
    assert write_html(report, tmp_path).read_text().startswith("<!DOCTYPE html>")
