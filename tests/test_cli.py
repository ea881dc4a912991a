"""The command line: help, one-line errors, host checks."""

import pytest

from callpath.cli import main
from callpath.probes import kernel


def test_help_ends_with_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "callpath verify --kernel" in out
    assert "--workload" in out and "--host" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "verify" in capsys.readouterr().out


def test_bad_spec_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"1. f()\n\xff\xfe\n")
    assert main(["verify", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("callpath: error: ") and "bad.txt:2: not UTF-8" in err[0]


def test_missing_spec(tmp_path, capsys):
    assert main(["report", "nope.parquet"]) == 2
    assert "no such trace file" in capsys.readouterr().err


@pytest.mark.skipif(kernel.has_kprobes(), reason="this kernel has kprobes")
def test_host_without_kprobes_says_so(tmp_path, capsys):
    rc = main(["verify", "--host", "specs/macvlan-newlink-xmit.txt", "--out", str(tmp_path)])
    assert rc == 1
    err = capsys.readouterr().err
    assert "callpath: error:" in err and ("no kprobe support" in err or "needs root" in err)
    assert "Traceback" not in err


def test_command_after_double_dash(monkeypatch):
    from callpath import cli

    seen = {}
    monkeypatch.setattr(cli, "cmd_record", lambda a: seen.update(specs=a.specs, out=a.out, command=a.command) or 0)
    assert main(["record", "s1", "s2", "--out", "t.parquet", "--", "./traffic.sh", "-n", "3"]) == 0
    assert seen == {"specs": ["s1", "s2"], "out": "t.parquet", "command": ["./traffic.sh", "-n", "3"]}
    traffic = cli._traffic(type("A", (), {"workload": None, "packets": 5, "duration": None, "until_interrupt": False,
                                          "command": ["x"], "ringbuf_pages": 64})())
    assert traffic.kwargs()["command"] == ["x"] and traffic.argv()[-2:] == ["--", "x"]


def test_sigterm_ends_a_command_like_ctrl_c(monkeypatch, capsys):
    """SIGTERM must unwind through the cleanup paths (lab VM kill, probe detach), not kill outright."""
    import os
    import signal

    from callpath import cli

    cleaned = []

    def fake_report(_args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
            return 0
        finally:
            cleaned.append(True)

    monkeypatch.setattr(cli, "cmd_report", fake_report)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["report", "x.parquet"]) == 130
    assert cleaned == [True]
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) == before  # handler restored


def test_readme_commands_block_matches_the_parser():
    """Every flag the README's command summary shows exists (pwru's drifted --help block, avoided)."""
    import re
    from pathlib import Path

    from callpath.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("## Commands", 1)[1].split("```", 2)[1]
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "cmd")
    known = {opt for p in sub.choices.values() for a in p._actions for opt in a.option_strings}
    for line in block.splitlines():
        m = re.match(r"\s*callpath (\w+)", line)
        if m:
            assert m.group(1) in sub.choices, m.group(1)
    flags = set(re.findall(r"(--[a-z][a-z-]+)", block))
    assert flags and flags <= known, flags - known
