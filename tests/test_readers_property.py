"""Property-based tests: both readers take generated documents without tracebacks."""

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callpath.analysis.calltext import BUILTINS, is_label, is_macro
from callpath.analysis.outline import parse_outline
from callpath.analysis.prose import parse_prose
from callpath.analysis.readers import read_spec
from callpath.analysis.spec import SpecError

IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
ARG = st.one_of(IDENT, st.just(""), st.just("&x->y"), st.just("tb[IFLA_LINK]"), st.just("0"))
#: names a reader takes for kernel functions (not pointer labels, macros or builtins)
FUNC = IDENT.filter(lambda n: not is_label(n) and not is_macro(n) and n not in BUILTINS)
CALL = st.builds(lambda f, a: f"{f}({', '.join(a)})", IDENT, st.lists(ARG, max_size=4))
TAIL = st.sampled_from(["", ", if addr", ", A: broadcast", ", a remark", " ", ";"])
STEP_TEXT = st.one_of(
    st.builds(lambda c, t: c + t, CALL, TAIL),
    st.builds(lambda a, b: f"{a} -> {b}", CALL, CALL),
    st.builds(lambda r, c: f"{r} = {c}", IDENT, CALL),
    st.builds(lambda a, b: f"{a}->{b} = x", IDENT, IDENT),
    st.sampled_from(["memcpy(a, b, 6)", "INIT_LIST_HEAD(&x)", "for_each_possible_cpu(i)", "ops->newlink() -> f_x()",
                     "f(unbalanced", "))((", "return g_y(&z);"]),
    st.text(alphabet=string.printable, max_size=30),
)
NUMBER = st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=5).map(lambda xs: ".".join(map(str, xs)))
LINE = st.one_of(
    st.builds(lambda n, t: f"{n}{'.' if '.' not in n else ''} {t}", NUMBER, STEP_TEXT),
    st.just("=" * 20), st.just(""), st.just("; a comment"), st.just("static int __init f(void)"),
    st.just("    +----+  diagram"), st.text(max_size=20),
)


def check_structure(spec):
    for path in spec.paths:
        numbers = {s.number for s in path.steps}
        for s in path.steps:
            assert s.parent is None or s.parent in numbers
            assert (s.kind == "call") == bool(s.chain)
            assert len(s.args) in (0, len(s.chain))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=40))
def test_outline_reader_never_tracebacks(lines):
    try:
        spec = parse_outline("\n".join(lines), "gen.txt")
    except SpecError as err:
        assert str(err).startswith("gen.txt:") and "\n" not in str(err)
        return
    check_structure(spec)
    assert all(w.startswith("gen.txt:") for w in spec.warnings)


@st.composite
def outline_tree(draw):
    """A well-formed outline and the (number, parent, function) triples it encodes."""
    expected = []
    for top in range(1, draw(st.integers(1, 3)) + 1):
        expected.append((str(top), None, draw(FUNC)))
        frontier = [str(top)]
        for _ in range(draw(st.integers(0, 8))):
            parent = draw(st.sampled_from(frontier))
            number = f"{parent}.{sum(1 for _, p, _ in expected if p == parent) + 1}"
            expected.append((number, parent, draw(FUNC)))
            frontier.append(number)
    # document order: parents before children, siblings in order
    order = sorted(expected, key=lambda e: [int(x) for x in e[0].split(".")])
    text_lines = []
    for number, parent, fn in order:
        text_lines.append(f"{number}{'.' if parent is None else ''} {fn}({'' if parent is None else 'skb, dev'})"
                          + ("" if parent is None else ", if x"))
        text_lines.append("=" * 10)
    return "\n".join(text_lines), order


@settings(max_examples=200)
@given(outline_tree())
def test_outline_reader_recovers_the_tree(doc):
    text, expected = doc
    spec = parse_outline(text, "tree.txt")
    got = [(s.number, s.parent, s.function) for p in spec.paths for s in p.steps]
    assert got == expected
    assert not spec.warnings
    for p in spec.paths:
        for s in p.steps[1:]:
            assert s.condition == "if x" and s.args == [["skb", "dev"]]


PHRASE = st.sampled_from([
    "`{a}` calls `{b}`", "`{a}` is called by `{b}` when x", "`{a}` calls `{b}` or `{c}`", "`{a}` sets up a `net_device`",
    "it calls `{a}` to do things", "`{a}` is handled by `{b}`", "if y, `{a}` calls `{b}`", "`RX_HANDLER_PASS` is returned",
    "`ip link add x type veth`", "just prose", "`{a}->{b}` is `eth0`", "`", "``", "- - -",
])


@st.composite
def prose_doc(draw):
    lines = ["Title", "=====", ""]
    for _ in range(draw(st.integers(1, 3))):
        lines.append(f"## {draw(IDENT)}")
        for _ in range(draw(st.integers(0, 8))):
            indent = "  " * draw(st.integers(0, 3))
            phrase = draw(PHRASE).format(a=draw(IDENT), b=draw(IDENT), c=draw(IDENT))
            lines.append(f"{indent}- {phrase}")
    return "\n".join(lines)


@settings(max_examples=300)
@given(prose_doc())
def test_prose_reader_never_tracebacks(text):
    try:
        spec = parse_prose(text, "gen.md")
    except SpecError as err:
        assert str(err).startswith("gen.md:")
        return
    check_structure(spec)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_spec_or_one_line_error(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("b") / "doc.txt"
    f.write_bytes(data)
    try:
        read_spec(f)
    except SpecError as err:
        assert "\n" not in str(err) and str(err).startswith(str(f) + ":")


# --- size and shape extremes (issue 8): no traceback, one-line errors, warnings not guesses ---

from callpath.analysis.calltext import _CALLEE_RE, _callee_start, parse_step_text  # noqa: E402

WILD = st.text(alphabet=st.sampled_from(list("ab_1 ().,->=*&`|<>#\x00\x1b\x07\t\u202e\né")), max_size=60)
DEEP_NUMBER = st.lists(st.integers(min_value=0, max_value=10**12), min_size=1, max_size=120).map(
    lambda xs: ".".join(map(str, xs)))


@settings(deadline=None, max_examples=150)
@given(WILD)
def test_callee_scan_equals_the_regex(text):
    for end in [i for i, ch in enumerate(text) if ch == "("] or [len(text)]:
        m = _CALLEE_RE.search(text[:end])
        assert _callee_start(text, end) == (m.start(1) if m else None)


@settings(deadline=None, max_examples=150)
@given(WILD)
def test_step_text_never_probes_a_non_identifier(text):
    parsed = parse_step_text(text)
    assert all(_CALLEE_RE.fullmatch(f) and "->" not in f and "." not in f for f in parsed.chain)
    assert (parsed.kind == "call") == bool(parsed.chain)


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.one_of(
    st.builds(lambda n, t: f"{n} {t}", DEEP_NUMBER, WILD),
    st.builds(lambda n: f"{n}. f_x(" + "(" * n + ")", st.integers(0, 3000)),  # unbalanced, deep
    st.text(alphabet=st.characters(max_codepoint=0x10FFFF, exclude_categories=["Cs"]), max_size=200),
    st.just("1. " + "a" * 20_000 + "(x)"),
), max_size=30))
def test_outline_extremes(lines):
    text = "\n".join(lines)
    try:
        spec = parse_outline(text, "x.txt")
    except SpecError as err:
        assert "\n" not in str(err) and str(err).startswith("x.txt:")
        return
    check_structure(spec)
    for p in spec.paths:
        for s in p.steps:
            assert len(s.number.split(".")) <= 64


@settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 400), st.integers(0, 400), st.booleans())
def test_prose_deep_and_wide(depth, width, continuation):
    lines = ["T", "## h"] + [" " * i + f"- `f{i}` calls `g{i}`" for i in range(depth)]
    lines += [f"- `w{i}` sets up x" + ("\n  more text" if continuation else "") for i in range(width)]
    spec = parse_prose("\n".join(lines), "p.md")
    check_structure(spec)
    assert len(spec.paths) == 1 + width


@settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000).map(lambda b: b"1. f_a(x)\n" + b))
def test_control_bytes_and_nuls_are_one_line_errors_or_a_spec(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("c") / "doc.txt"
    f.write_bytes(data)
    try:
        spec = read_spec(f)
    except SpecError as err:
        assert "\n" not in str(err)
        if b"\x00" in data:
            assert "NUL byte" in str(err)
        return
    check_structure(spec)
