"""Shared kernel state is left as found: tracefs instance for module init, no tracer reset of
another tool's, lint loads no module (fake tracefs trees; one `root` test on the real tracefs)."""

import os
import subprocess
from pathlib import Path

import pytest

from callpath.cli import main
from callpath.probes import boottrace, kernel, runstate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SPEC = Path(__file__).resolve().parent.parent / "specs" / "macvlan-newlink-xmit.txt"
GLOBAL_FILES = ("current_tracer", "tracing_on", "trace", "set_graph_function")


@pytest.fixture(autouse=True)
def fresh_registry(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("CALLPATH_RUN_DIR", str(d))
    monkeypatch.setattr(runstate, "_reg", runstate._Registry())


def fake_tracefs(tmp_path, tracer="nop"):
    t = tmp_path / "tracing"
    (t / "instances").mkdir(parents=True)
    (t / "events").mkdir()
    (t / "current_tracer").write_text(tracer + "\n")
    (t / "tracing_on").write_text("0\n")
    (t / "trace").write_text("# the administrator's trace\n")
    (t / "set_graph_function").write_text("tcp_sendmsg\n")
    (t / "kprobe_events").write_text("p:admin/keep do_sys_open\n")
    return t


def tracefs_append(t: Path):
    """What tracefs does on a kprobe_events write: a defined event appears in events/ of every instance."""
    real_append = boottrace._append

    def append(path, line):
        real_append(path, line)
        if line[0] in "pr":
            group_name = line.split()[0].split(":", 1)[1]
            for base in [t, *(t / "instances").iterdir()]:
                (base / "events" / group_name).mkdir(parents=True, exist_ok=True)
                (base / "events" / group_name.split("/")[0] / "enable").write_text("0\n")

    return append


def instance_rmdir(monkeypatch, t: Path):
    """rmdir of a tracefs instance removes it with its files; in a fake tree, clear them first."""
    import shutil

    real_rmdir = Path.rmdir
    monkeypatch.setattr(Path, "rmdir", lambda self: shutil.rmtree(self) if self.parent == t / "instances"
                        else real_rmdir(self))


def snapshot(t: Path) -> dict:
    return {n: (t / n).read_text() for n in GLOBAL_FILES}


def test_module_init_capture_uses_its_own_instance(tmp_path, monkeypatch):
    t = fake_tracefs(tmp_path)
    before = snapshot(t)
    monkeypatch.setattr(boottrace, "_append", tracefs_append(t))

    def modprobe(argv, **kw):
        assert argv[:2] == ["modprobe", "--"]
        # the instance holds what the events recorded while the module loaded
        inst = t / "instances" / f"callpath-{os.getpid()}"
        assert (inst / "events" / f"callpath_{os.getpid()}" / "enable").read_text().endswith("1\n")
        (inst / "trace").write_text(" modprobe-1 [000] ..... 1.000000: cp_p0: (macvtap_init+0x0/0x90)\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(boottrace.subprocess, "run", modprobe)
    instance_rmdir(monkeypatch, t)
    rows, notes, text = boottrace.capture_module_init(str(t), "macvtap", ["macvtap_init"], {"macvtap_init": "macvtap"})
    assert snapshot(t) == before  # global tracer, buffer, tracing_on, graph filter untouched
    group = f"callpath_{os.getpid()}"
    assert (t / "kprobe_events").read_text().splitlines() == [
        "p:admin/keep do_sys_open",  # another tool's event: never touched
        f"p:{group}/cp_p0 macvtap:macvtap_init", f"r:{group}/cp_r0 macvtap:macvtap_init arg1=$retval",
        f"-:{group}/cp_p0", f"-:{group}/cp_r0"]
    assert not (t / "instances" / f"callpath-{os.getpid()}").exists()
    assert [r[-1] for r in rows] == ["macvtap_init"] and "cp_p0" in text
    assert runstate.leftover() == [("module", "macvtap")]  # the caller unloads it (kernel.unload_module)


def test_module_init_capture_cleans_up_when_interrupted(tmp_path, monkeypatch):
    """A signal between adding events and the modprobe: events and instance go, nothing global changes."""
    t = fake_tracefs(tmp_path)
    before = snapshot(t)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(boottrace.subprocess, "run", boom)
    monkeypatch.setattr(boottrace, "_append", tracefs_append(t))
    instance_rmdir(monkeypatch, t)
    with pytest.raises(KeyboardInterrupt):
        boottrace.capture_module_init(str(t), "macvtap", ["macvtap_init", "macvlan_common_newlink"],
                                      {"macvtap_init": "macvtap", "macvlan_common_newlink": "macvlan"})
    group = f"callpath_{os.getpid()}"
    lines = (t / "kprobe_events").read_text().splitlines()
    added = [ln.split()[0][2:] for ln in lines if ln.startswith(("p:callpath", "r:callpath"))]
    removed = [ln[2:] for ln in lines if ln.startswith("-:")]
    assert added and sorted(added) == sorted(removed) and all(a.startswith(group + "/") for a in added)
    assert snapshot(t) == before
    assert [k for k, _ in runstate.leftover()] == ["module"]


def test_boot_graph_of_another_tool_is_read_not_reset(tmp_path):
    t = fake_tracefs(tmp_path, tracer="function_graph")
    graph = (FIXTURES / "boot-graph-net_dev_init-6.1.0-56-amd64.txt").read_text()
    (t / "trace").write_text(graph)
    before = snapshot(t)
    got = boottrace.capture_boot_graph(str(t), cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda ftrace=function_graph")
    assert got is not None and got[1]["calls"] > 0
    assert snapshot(t) == before


def test_boot_graph_callpath_booted_is_switched_off(tmp_path):
    t = fake_tracefs(tmp_path, tracer="function_graph")
    (t / "trace").write_text((FIXTURES / "boot-graph-net_dev_init-6.1.0-56-amd64.txt").read_text())
    ours = "root=/dev/root " + boottrace.graph_cmdline(["net_dev_init"])
    assert boottrace.booted_with_our_graph(ours) and not boottrace.booted_with_our_graph("ftrace=function_graph")
    assert boottrace.capture_boot_graph(str(t), cmdline=ours) is not None
    assert (t / "current_tracer").read_text().strip() == "nop"


def test_lint_on_the_host_loads_no_module(monkeypatch, capsys):
    calls = []
    real_run = subprocess.run

    def run(argv, *a, **k):
        calls.append(list(argv))
        return real_run(argv, *a, **k)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(kernel.subprocess, "run", run)
    main(["lint", "--json", str(SPEC)])
    assert not [c for c in calls if c and "modprobe" in c[0]], calls
    # at most a tracefs mount to read available_filter_functions, and it is undone
    assert runstate.leftover() == [] and set(k for k, _ in runstate._reg.live) <= {"mount"}


def _real_tracefs_state(t: str) -> dict:
    names = ("current_tracer", "tracing_on", "kprobe_events", "set_graph_function", "trace")
    state = {n: Path(t, n).read_text() for n in names if Path(t, n).exists()}
    state["instances"] = sorted(os.listdir(Path(t, "instances")))
    mods = Path("/proc/modules")  # absent on a kernel without module support
    state["modules"] = sorted(line.split()[0] for line in mods.read_text().splitlines()) if mods.exists() else None
    return state


@pytest.mark.root
def test_lint_leaves_tracefs_and_modules_as_found():
    if os.geteuid() != 0:
        pytest.skip("needs root: mounts tracefs and reads /proc/modules")
    with kernel.mounted_tracefs() as t:  # mounted for the test if needed, unmounted after
        if not t:
            pytest.skip("tracefs cannot be mounted here")
        before = _real_tracefs_state(t)
        assert main(["lint", "--host", "--json", str(SPEC)]) in (0, 1)
        assert _real_tracefs_state(t) == before
