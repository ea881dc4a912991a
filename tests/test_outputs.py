"""Outputs: staged and published only on success; one-line errors; escaped rendering."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from callpath import outputs
from callpath.analysis.report import render_markdown, summary_lines
from callpath.analysis.textsafe import md_code, md_text, terminal
from callpath.analysis.trace import TraceError, read_trace
from callpath.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
REPO = Path(__file__).resolve().parent.parent


def error_lines(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [l for l in err.splitlines() if l.startswith("callpath: error:")]


# --- staging ----------------------------------------------------------------------

def test_staged_dir_publishes_only_on_success(tmp_path, monkeypatch):
    registered = []
    from callpath.probes import runstate

    monkeypatch.setattr(runstate, "register", lambda kind, value: registered.append(("add", kind, value)))
    monkeypatch.setattr(runstate, "unregister", lambda kind, value: registered.append(("del", kind, value)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("old")
    (out / "trace.parquet").write_text("trace")
    with pytest.raises(RuntimeError):
        with outputs.staged_dir(out) as tmp:
            (tmp / "report.md").write_text("half")
            raise RuntimeError("analysis failed")
    assert (out / "report.md").read_text() == "old" and sorted(p.name for p in out.iterdir()) == ["report.md", "trace.parquet"]
    with outputs.staged_dir(out) as tmp:
        assert tmp.parent == out and tmp.name.startswith("callpath-")
        (tmp / "report.md").write_text("new")
        (tmp / "latency-x.png").write_text("png")
    assert (out / "report.md").read_text() == "new" and (out / "trace.parquet").read_text() == "trace"
    assert sorted(p.name for p in out.iterdir()) == ["latency-x.png", "report.md", "trace.parquet"]
    kinds = {(op, kind) for op, kind, _ in registered}
    assert kinds == {("add", "dir"), ("del", "dir")} and len(registered) == 4


def test_staged_dir_removes_a_folder_it_created_when_the_run_fails(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with outputs.staged_dir(tmp_path / "new") as tmp:
            (tmp / "x").write_text("x")
            raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()


def test_staged_file_keeps_the_previous_file(tmp_path):
    target = tmp_path / "t.parquet"
    target.write_text("old")
    with pytest.raises(ValueError):
        with outputs.staged_file(target) as tmp:
            tmp.write_text("new")
            raise ValueError
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["t.parquet"]
    with outputs.staged_file(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["t.parquet"]


def test_convert_refuses_two_inputs_for_one_output(tmp_path, capsys):
    # before: D/doc.toml silently written twice, the first lost
    (tmp_path / "doc.txt").write_text("1. f_a(x)\n")
    (tmp_path / "doc.md").write_text("## t\n- `f_b` calls `g_b`\n")
    out = tmp_path / "D"
    assert main(["convert", str(tmp_path / "doc.txt"), str(tmp_path / "doc.md"), "--out-dir", str(out)]) == 2
    errs = error_lines(capsys)
    assert len(errs) == 1 and "doc.toml: both" in errs[0] and "would be written here" in errs[0]
    assert not out.exists()


def test_report_out_naming_a_file_is_one_line(tmp_path, capsys):
    # before: traceback (NotADirectoryError / FileExistsError)
    f = tmp_path / "file"
    f.write_text("keep")
    assert main(["report", str(FIXTURE), "--out", str(f)]) == 2
    assert "exists and is not a folder" in error_lines(capsys)[0]
    assert f.read_text() == "keep"


def test_unwritable_report_folder_is_one_line(tmp_path, capsys, monkeypatch):
    # as root every folder is writable: make mkdir fail as it does for a user
    ro = tmp_path / "ro"
    ro.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, mode=0o777, **kw):
        if Path(path).parent == ro:
            raise PermissionError(13, "Permission denied", str(path))
        return real_mkdir(path, mode, **kw)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert main(["report", str(FIXTURE), "--out", str(ro)]) == 2
    assert f"{ro}: cannot write the outputs there: not writable (Permission denied)" in error_lines(capsys)[0]
    assert os.listdir(ro) == []


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to become nobody")
def test_read_only_trace_folder_as_nobody():
    # before: PermissionError traceback
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="callpath-test-ro-", dir="/tmp"))  # pytest's tmp_path is 0700 root
    try:
        os.chmod(base, 0o755)
        ro = base / "ro"
        ro.mkdir(mode=0o755)
        shutil.copy(FIXTURE, ro / "trace.parquet")
        os.chmod(ro / "trace.parquet", 0o644)
        os.chmod(ro, 0o555)
        proc = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
                               "callpath", "report", str(ro)], capture_output=True, text=True, cwd=REPO, timeout=300)
        if "callpath" not in proc.stderr:
            pytest.skip(f"nobody cannot run callpath here: {proc.stderr[:200]}")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{ro}: cannot write the outputs there: not writable" in proc.stderr.splitlines()[-1]
        assert os.listdir(ro) == ["trace.parquet"]
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- trace metadata -----------------------------------------------------------------

@pytest.mark.parametrize("raw, field", [
    (b"\x00garbage{", "not JSON"), (b"[1, 2]", "array, not a JSON object"),
    (None, "metadata field 'lost' should be a count"), (b"[" * 50000 + b"]" * 50000, "not JSON"),
])
def test_bad_trace_metadata_is_refused_before_any_png(tmp_path, capsys, raw, field):
    # before: PNGs written, then a traceback
    table = pq.read_table(FIXTURE)
    if raw is None:
        meta = json.loads(table.schema.metadata[b"callpath"])
        raw = json.dumps(dict(meta, lost="lots")).encode()
    bad = tmp_path / "bad.parquet"
    pq.write_table(table.replace_schema_metadata({b"callpath": raw}), bad)
    with pytest.raises(TraceError, match=field.replace("(", r"\(")):
        read_trace(bad)
    out = tmp_path / "out"
    assert main(["report", str(bad), "--out", str(out)]) == 2
    assert field in error_lines(capsys)[0]
    assert not out.exists()


def test_trace_that_is_not_a_regular_file(tmp_path):
    os.mkfifo(tmp_path / "t.parquet")
    with pytest.raises(TraceError, match="not a regular file"):
        read_trace(tmp_path / "t.parquet")


# --- escaping -----------------------------------------------------------------------

HOSTILE = "a|b `c` <script>alert(1)</script>\n# heading \x1b]8;;http://x\x07link\x1b[31m"


def _report(text: str) -> dict:
    step = {"number": "1|2", "function": "f", "text": text, "verdict": "observed", "count": 1, "evidence": [text],
            "detail": f"detail {text}", "branch": text, "condition": None, "symbol": None}
    path = {"name": text, "source": f"{text}:1", "number": "#1", "trigger": text, "spec": "s",
            "summary": {"observed": 1, "checkable": 1, "verdicts": {k: 0 for k in (
                "observed-out-of-order", "not-exercised", "absent", "not-traceable", "not-a-call")}},
            "steps": [step]}
    return {"kernel": text, "where": text, "mechanism": "kprobe", "events": 1, "lost": 0, "orphan_returns": 0,
            "unterminated": 0, "workloads": [{"name": text, "description": text}], "attach_failed": {text: text},
            "plan": {text: {"status": text, "symbol": text, "reason": text}}, "paths": [path], "latency": [],
            "specs": []}


def _cells(row: str) -> int:
    """Table cells as GFM splits them: at pipes not escaped with a backslash."""
    import re

    return len(re.findall(r"(?<!\\)\|", row)) - 1


def test_report_markdown_escapes_document_text():
    # before: raw <script>, | splitting the 8-column table, a heading from a leading #
    import re

    md = render_markdown(_report(HOSTILE))
    assert "\x1b" not in md and "\x07" not in md
    outside_code = re.sub(r"(`+)(.+?)(?<!`)\1(?!`)", "", md)  # a code span shows <script> as text
    assert "<script>" not in outside_code and "&lt;script>" in md
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---"):
            width = line.count("|") - 1
            for row in lines[i + 1:]:
                if not row.startswith("|"):
                    break
                assert _cells(row) == width, row
    assert all(not l.startswith("# heading") for l in lines)
    assert [l for l in lines if l.startswith("#")][0] == "# callpath path-conformance report"


def test_terminal_text_has_no_escape_sequences():
    assert terminal("a\x1b[2Jb\x9b\u202e\n") == "a\\x1b[2Jb\\x9b\\u202e\\x0a"
    assert terminal("naïve → ok") == "naïve → ok"
    line = summary_lines(_report(HOSTILE))[0]
    assert "\x1b" not in line and "\n" not in line and "\x07" not in line


def test_progress_and_error_lines_are_escaped(tmp_path, capsys):
    doc = tmp_path / "evil\x1b[31m.txt"
    doc.write_bytes(b"\xff")
    assert main(["convert", str(doc)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "evil\\x1b[31m.txt:1: not UTF-8" in err


def test_markdown_helpers():
    assert md_text("# x | <b>&") == "\\# x \\| &lt;b>&amp;"
    assert md_code("a``b|c") == "``` a``b\\|c ```"
    assert md_code("x\ny") == "`x y`"
