"""Hostile and careless input: bounded reading, whole folders, odd step text, linear readers.

Each test names the issue-8 case it covers; each failed on the code before it.
"""

import os
import socket
import time

import pytest

from callpath.analysis import calltext, ownspec
from callpath.analysis.outline import parse_outline
from callpath.analysis.prose import parse_prose
from callpath.analysis.readers import (DEFAULT_MAX_DOC_BYTES, read_document_bytes, read_spec, select_documents)
from callpath.analysis.spec import SpecError
from callpath.cli import main


def one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [l for l in err.splitlines() if l.startswith("callpath: error:")]


# --- bounded input: checked before a byte is read ---------------------------------

def test_dev_zero_is_refused_at_once(capsys):
    # before: read 16 GB until the OOM killer ended it
    t0 = time.monotonic()
    assert main(["lint", "/dev/zero"]) == 2
    assert time.monotonic() - t0 < 10
    errs = one_error_line(capsys)
    assert errs == ["callpath: error: /dev/zero:0: is a character device, not a regular file: give a text document"]


def test_fifo_does_not_block(tmp_path, capsys):
    # before: open() of a FIFO blocked forever
    fifo = tmp_path / "doc.txt"
    os.mkfifo(fifo)
    assert main(["convert", str(fifo)]) == 2
    assert "is a FIFO, not a regular file" in one_error_line(capsys)[0]


def test_socket_directory_and_symlink_loop(tmp_path):
    sock_path = tmp_path / "s.txt"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    try:
        with pytest.raises(SpecError, match="is a socket"):
            read_spec(sock_path)
    finally:
        s.close()
    with pytest.raises(SpecError, match="is a directory"):
        read_document_bytes(tmp_path)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(SpecError, match="symlink loop"):
        read_spec(tmp_path / "a")


def test_symlink_loop_argument_is_one_line(tmp_path, capsys, monkeypatch):
    # before: RuntimeError traceback from Path.resolve() in the CLI
    monkeypatch.chdir(tmp_path)
    os.symlink("b.txt", "a.txt")
    os.symlink("a.txt", "b.txt")
    assert main(["convert", "a.txt"]) == 2
    assert "a.txt:0: symlink loop" in one_error_line(capsys)[0]


def test_size_limit_flag_and_environment(tmp_path, capsys, monkeypatch):
    doc = tmp_path / "big.txt"
    doc.write_text("1. f_a(x)\n" + "; padding\n" * 200)
    assert len(read_document_bytes(doc)) < DEFAULT_MAX_DOC_BYTES
    assert main(["convert", str(doc), "--max-doc-bytes", "100"]) == 2
    assert "larger than the document limit of 100 bytes" in one_error_line(capsys)[0]
    monkeypatch.setenv("CALLPATH_MAX_DOC_BYTES", "50")
    with pytest.raises(SpecError, match="limit of 50 bytes"):
        read_spec(doc)
    monkeypatch.setenv("CALLPATH_MAX_DOC_BYTES", "lots")
    with pytest.raises(SpecError, match="CALLPATH_MAX_DOC_BYTES"):
        read_spec(doc)


def test_a_file_that_grows_is_read_at_most_limit_plus_one(tmp_path):
    # /proc files report size 0 and may be endless: the read itself is bounded
    with pytest.raises(SpecError, match="larger than the document limit of 64 bytes"):
        read_document_bytes("/proc/self/maps", 64)


# --- whole folders -----------------------------------------------------------------

def test_every_bad_document_of_a_folder_is_reported(tmp_path, capsys):
    # before: lint/convert stopped at the first bad file
    (tmp_path / "a.txt").write_bytes(b"\xff\xfe")
    (tmp_path / "b.txt").write_text("1. f_b(x)\n1.1 g_b(y)\n")
    (tmp_path / "c.md").write_text("no function here")
    (tmp_path / "D.TXT").write_text("1. f_d(x)\n")  # any letter case
    out = tmp_path / "out"
    assert main(["convert", str(tmp_path), "--out-dir", str(out)]) == 2
    errs = one_error_line(capsys)
    assert len(errs) == 2 and "a.txt:1: not UTF-8" in errs[0] and "c.md:1:" in errs[1]
    assert not out.exists()  # all or nothing: no partial output
    assert [p.name for p in select_documents([str(tmp_path)]).documents] == ["D.TXT", "a.txt", "b.txt", "c.md"]


def test_lint_reports_every_bad_document_and_lints_the_rest(tmp_path, capsys, monkeypatch):
    from callpath.probes import session

    (tmp_path / "bad.txt").write_bytes(b"\x00")
    (tmp_path / "good.txt").write_text("1. f_g(x) -> -> ()\n")
    seen = []
    monkeypatch.setattr(session, "lint_on_host", lambda specs, progress, debuginfo=None: seen.extend(specs) or
                        {"kernel": "k", "traceable_known": True, "documents": [], "absent": 0})
    assert main(["lint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bad.txt:1: binary data" in err
    assert [s.source for s in seen] == [str(tmp_path / "good.txt")]
    # lint shows the warnings convert prints
    assert "warning: " in err and "good.txt:1: step 1: '->' after f_g(...) leads to no function" in err


@pytest.mark.parametrize("names", [[], ["notes.rst", "x.TXT.orig", ".hidden.txt"]])
def test_a_folder_without_documents_is_an_error(tmp_path, capsys, names):
    # before: checked as nothing, exit 0
    for n in names:
        (tmp_path / n).write_text("1. f_x(y)\n")
    assert main(["lint", str(tmp_path)]) == 2
    err = one_error_line(capsys)[0]
    assert "no documents in this folder" in err and ".txt, .md, .markdown, .toml in any letter case" in err
    for n in names:
        assert n in err


# --- step text that is not a call ---------------------------------------------------

def test_empty_chain_element_is_a_warning_not_a_function():
    spec = parse_outline("1. a_x() -> b_x() -> c_x() -> -> ()\n", "w.txt")
    step = spec.paths[0].steps[0]
    assert step.chain == ["a_x", "b_x", "c_x"] and "" not in step.chain
    assert spec.warnings and spec.warnings[0].startswith("w.txt:1: step 1: '->' after c_x(...)")
    assert any(n.startswith("not a call:") for n in step.notes)


@pytest.mark.parametrize("text", ["<script>alert(1)</script>(x)", "foo-bar(x)", "fünc(x)", "\x1b[31mf_red(x)"])
def test_non_identifier_names_are_not_calls(text):
    spec = parse_outline(f"1. root_fn(x)\n1.1 {text}\n", "s.txt")
    step = spec.paths[0].steps[1]
    assert step.kind == "statement" and step.chain == []
    assert "alert" not in spec.functions() and spec.functions() == ["root_fn"]
    assert any("not read as a call" in w for w in spec.warnings)


def test_callee_scan_matches_the_documented_regex():
    for text in ["a->b (", "x = ops.f(", "1abc(", "a->1b(", "  f  (", "-> g(", "a -> b . c(", "(", "x)(", "é_f("]:
        m = calltext._CALLEE_RE.search(text[:-1])
        assert calltext._callee_start(text, len(text) - 1) == (m.start(1) if m else None), text


# --- readers are linear --------------------------------------------------------------

def _many_paths_toml(n: int) -> str:
    parts = ["callpath_spec = 1", 'title = "many"', ""]
    for i in range(1, n + 1):
        parts += ["[[path]]", f'id = "{i}"', f'name = "f{i}"', "", "[[path.step]]", f'id = "{i}"',
                  f'text = "f{i}(skb)"', f'calls = ["f{i}"]', "", "[[path.step]]", f'id = "{i}.1"', f'caller = "{i}"',
                  f'text = "g{i}(skb)"', f'calls = ["g{i}"]', ""]
    return "\n".join(parts)


def test_toml_of_4000_paths(tmp_path):
    # before: ownspec._line_of split the whole text once per path (18 s here, 159 s in the issue)
    doc = tmp_path / "many.toml"
    doc.write_text(_many_paths_toml(4000))
    t0 = time.monotonic()
    spec = read_spec(doc)
    print(f"4,000-path TOML read in {time.monotonic() - t0:.2f} s")
    assert len(spec.paths) == 4000
    assert spec.paths[0].source == f"{doc}:5" and spec.paths[-1].source == f"{doc}:{5 + 15 * 3999}"
    assert spec.paths[-1].steps[1].parent == "4000" and spec.paths[-1].functions() == ["f4000", "g4000"]


def test_toml_long_caller_chain():
    # before: the cycle check walked every chain again (cubic in the chain length)
    steps = ['[[path.step]]\nid = "1"\ntext = "s0()"\ncalls = ["s0"]']
    steps += [f'[[path.step]]\nid = "{i}"\ncaller = "{i - 1}"\ntext = "s{i}()"\ncalls = ["s{i}"]' for i in range(2, 3001)]
    text = 'callpath_spec = 1\ntitle = "t"\n[[path]]\nid = "1"\nname = "n"\n' + "\n".join(steps)
    spec = ownspec.loads(text, "chain.toml")
    assert len(spec.paths[0].steps) == 3000 and spec.paths[0].steps[-1].parent == "2999"


def test_deep_bullets_do_not_overflow_the_stack():
    # before: RecursionError (a traceback) at about 1,000 levels
    lines = ["T", "## topic"] + [" " * i + f"- `f{i}` calls `f{i + 1}`" for i in range(3000)]
    spec = parse_prose("\n".join(lines), "deep.md")
    assert len(spec.paths) == 1 and len(spec.paths[0].steps) == 6000


def test_deep_and_long_step_numbers():
    # before: int() of a 5,000-digit number raised ValueError; deep numbers were quadratic
    text = "1. root_fn(x)\n" + "1." + "1." * 5000 + "1 deep_fn(x)\n" + "1." + "9" * 5000 + " long_fn(x)\n"
    spec = parse_outline(text, "n.txt")
    assert spec.functions() == ["root_fn"]
    assert sum("line kept as a note" in w for w in spec.warnings) == 2


def test_huge_line_with_many_groups_is_linear():
    # before: the callee regex ran on text[:i] for every parenthesis group
    body = "f_a(x) " + "(y) " * 200_000 + "a" * 100_000 + " b("
    parsed = calltext.parse_step_text(body)
    assert parsed.chain == ["f_a"]


def test_warnings_are_capped(tmp_path):
    doc = tmp_path / "w.txt"
    doc.write_text("".join(f"1.{i} f_{i}(x) -> -> ()\n" for i in range(1, 1001)))
    spec = read_spec(doc)
    assert len(spec.warnings) == 201 and spec.warnings[-1].endswith("more warnings not shown")
