"""Escape text that comes from documents or the kernel before callpath renders it.

Document text (step texts, path names, file names, remarks) and kernel text
(symbol names, reasons) may hold anything: terminal escape sequences (ANSI
CSI, OSC hyperlinks and title changes), other control characters, Unicode
bidirectional overrides, Markdown or HTML markup. Every place callpath prints
or renders such text goes through one of these functions:

* :func:`terminal` -- for stderr/stdout lines: control characters (C0, DEL,
  C1), line and paragraph separators and bidi controls become visible
  ``\\xNN`` / ``\\uNNNN`` escapes; a backslash stays a backslash. One input line
  stays one output line.
* :func:`md_text` -- for Markdown table cells and headings: the above, plus
  Markdown punctuation backslash-escaped and ``& <`` as HTML entities, so
  ``|`` cannot split a table row, ``<script>`` is shown and never run, and a
  leading ``#`` makes no heading.
* :func:`md_markup` -- callpath's own text with code spans: spans kept, the rest
  escaped as :func:`md_text`.
* :func:`md_code` -- an inline code span that holds any text (backtick runs
  inside get a longer fence; ``|`` is escaped as GFM tables require).

report.json needs none of this: JSON escaping is already exact.
"""

from __future__ import annotations

import re

# C0 controls (also \t \n \r), DEL, C1 controls, line/paragraph separators,
# bidi embedding/override/isolate controls, zero-width and BOM characters
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200b-\u200f\ufeff]")
#: Markdown punctuation that can start markup anywhere in a cell or heading;
#: ``<`` and ``&`` become entities (no tag, no entity can form without them)
_MD_PUNCT_RE = re.compile(r"([\\`*\[\]|#~<&])")
_MD_ENTITIES = {"<": "&lt;", "&": "&amp;"}


def _visible(ch: str) -> str:
    o = ord(ch)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def terminal(text: object) -> str:
    """``text`` safe to print on a terminal: control and bidi characters as escapes.

    ``terminal("a\\x1b[31mb\\n")`` -> ``"a\\\\x1b[31mb\\\\x0a"``. Printable text,
    including non-ASCII letters, is unchanged.
    """
    return _CONTROL_RE.sub(lambda m: _visible(m.group()), str(text))


def terminal_lines(text: object) -> str:
    """Like :func:`terminal` but keeps ``\\n`` line breaks (for multi-line renderings)."""
    return "\n".join(terminal(line) for line in str(text).split("\n"))


def _flat(text: object) -> str:
    """One line: newlines and tabs as spaces, other control characters as escapes."""
    return terminal(re.sub(r"[\r\n\t\u2028\u2029]+", " ", str(text)))


def md_text(text: object) -> str:
    """``text`` for a Markdown table cell or heading: no markup, no HTML, one line.

    ``md_text("<b>|x`")`` -> ``"&lt;b>\\|x\\`"``: renders as the literal text.
    """
    def esc(m: re.Match) -> str:
        ch = m.group(1)
        return _MD_ENTITIES.get(ch) or "\\" + ch

    return _MD_PUNCT_RE.sub(esc, _flat(text))


def md_code(text: object) -> str:
    """``text`` as one inline code span that shows it literally, safe inside a table cell.

    The fence is one backtick longer than the longest backtick run in ``text``;
    ``|`` is written ``\\|`` (GFM splits table cells before reading code spans).
    """
    flat = _flat(text).replace("|", "\\|")
    runs = [len(r) for r in re.findall(r"`+", flat)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if runs or flat.startswith(" ") or flat.endswith(" ") else ""
    return f"{fence}{pad}{flat}{pad}{fence}" if flat else "` `"


_TICKS_RE = re.compile(r"`+")


def md_markup(text: object) -> str:
    """Text that callpath wrote with code spans (``probed as `x` ``), made safe like :func:`md_text`.

    Well-formed code spans are kept (only ``|`` escaped inside them); everything
    outside them is escaped as :func:`md_text` does, including stray backticks.
    """
    flat = _flat(text)
    out, pos = [], 0
    while True:
        m = _TICKS_RE.search(flat, pos)
        if not m:
            break
        fence = m.group()
        close = re.compile(rf"(?<!`){fence}(?!`)").search(flat, m.end())
        if close is None:
            out.append(md_text(flat[pos : m.end()]))
            pos = m.end()
            continue
        out.append(md_text(flat[pos : m.start()]))
        out.append(fence + flat[m.end() : close.start()].replace("|", "\\|") + fence)
        pos = close.end()
    out.append(md_text(flat[pos:]))
    return "".join(out)
