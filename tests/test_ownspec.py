"""callpath's own TOML spec format: round trips from both readers, schema, bad input."""

import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest

from callpath.analysis import ownspec
from callpath.analysis.readers import read_spec
from callpath.analysis.spec import SpecError
from callpath.cli import main

SPECS = sorted((Path(__file__).resolve().parent.parent / "specs").iterdir())


@pytest.mark.parametrize("doc", SPECS, ids=lambda p: p.name)
def test_every_document_round_trips(doc):
    spec = read_spec(doc)
    text = ownspec.dumps(spec)
    again = ownspec.loads(text, "x.toml")
    assert again.source == "x.toml"
    again.source, again.warnings = spec.source, spec.warnings
    assert again == spec  # every path, step, chain, argument, label, branch, note


@pytest.mark.parametrize("doc", SPECS, ids=lambda p: p.name)
def test_converted_documents_validate_against_the_published_schema(doc):
    d = ownspec.to_document(read_spec(doc))
    jsonschema.validate(d, ownspec.schema())
    assert d["path"][0]["step"][0].get("caller") is None


def test_workloads_suggested_from_function_names():
    spec = read_spec(Path(SPECS[0]).parent / "macvlan-newlink-xmit.txt")
    assert spec.paths[2].workloads == ["macvlan"]
    spec = read_spec(Path(SPECS[0]).parent / "net-dev-init-boot.txt")
    assert spec.paths[0].workloads == []


def test_convert_cli_writes_files_that_read_back(tmp_path, capsys):
    out = tmp_path / "conv"
    assert main(["convert", str(SPECS[0].parent), "--out-dir", str(out)]) == 0
    files = sorted(out.glob("*.toml"))
    assert len(files) == len(SPECS)
    for f in files:
        spec = read_spec(f)  # .toml is read as callpath's own format
        assert spec.paths and spec.format in ("outline", "prose")
    assert main(["convert", "--schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"].startswith("callpath spec")


MINIMAL = """\
callpath_spec = 1
title = "t"

[[path]]
id = "1"
name = "p"

[[path.step]]
id = "1"
text = "a_fn()"
calls = ["a_fn"]

[[path.step]]
id = "1.1"
caller = "1"
text = "b_fn()"
calls = ["b_fn"]
"""


def test_minimal_hand_written_spec():
    spec = ownspec.loads(MINIMAL, "m.toml")
    (path,) = spec.paths
    assert path.step("1.1").parent == "1" and path.step("1.1").function == "b_fn"
    assert path.source == "m.toml:5"  # the path's id line


@pytest.mark.parametrize(
    "edit, message, line",
    [
        (lambda t: t.replace('caller = "1"', 'caller = "9"'), "names caller '9', which is not a step", 15),
        (lambda t: t.replace('id = "1"\ntext = "a_fn()"', 'id = "1"\ncaller = "1.1"\ntext = "a_fn()"'),
         "callers form a cycle", None),
        (lambda t: t.replace('calls = ["b_fn"]', 'calls = ["b fn"]'), "does not match", None),
        (lambda t: t.replace("callpath_spec = 1", "callpath_spec = 2"), "callpath_spec", None),
        (lambda t: t.replace('id = "1.1"', 'id = "1"'), "used twice", None),
        (lambda t: t + "\n[[path.step]\n", "not valid TOML", None),
    ],
)
def test_bad_own_specs_are_one_line_errors(edit, message, line):
    with pytest.raises(SpecError) as err:
        ownspec.loads(edit(MINIMAL), "m.toml")
    text = str(err.value)
    assert "\n" not in text and text.startswith("m.toml:") and message in text
    if line:
        assert text.startswith(f"m.toml:{line}:")


def test_dataclass_fields_all_serialised():
    """A new Step field must reach the TOML format, or round trips silently lose it."""
    from callpath.analysis.spec import Step

    covered = {"number", "parent", "text", "kind", "chain", "args", "labels", "result", "condition", "branch",
               "remark", "statement_kind", "line", "notes", "expected_returns"}
    assert {f.name for f in dataclasses.fields(Step)} == covered


def test_readme_example_is_a_valid_spec():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = ownspec.loads(block, "README.md")
    (path,) = spec.paths
    assert path.workloads == ["macvlan"]
    assert [s.kind for s in path.steps] == ["call", "call", "call", "statement"]
    assert path.step("1.1").branch == "B: unicast"
