"""The run registry: what a run registers survives its death and is swept (no root needed)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from callpath.probes import runstate


@pytest.fixture
def regdir(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("CALLPATH_RUN_DIR", str(d))
    return d


def _dead_pid() -> int:
    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(p.stdout)


def _child(code: str, regdir, *args) -> subprocess.Popen:
    env = dict(os.environ, CALLPATH_RUN_DIR=str(regdir))
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.PIPE, text=True)


def test_registered_before_creation_survives_sigkill_and_is_swept(regdir, tmp_path):
    """A child registers a temp dir and a process group, then is SIGKILLed: the sweep removes both."""
    code = (
        "import subprocess, sys, time\n"
        "from callpath.probes import runstate\n"
        "d = runstate.make_temp_dir('test', base=sys.argv[1])\n"
        "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
        "runstate.register('pid', str(p.pid))\n"
        "print(d, p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    child = _child(code, regdir, str(tmp_path))
    line = child.stdout.readline().split()
    made, sleeper = line[0], int(line[1])
    assert os.path.isdir(made) and os.path.basename(made).startswith("callpath-")
    files = list(regdir.glob("*.jsonl"))
    assert [f.name.split("-")[0] for f in files] == [str(child.pid)]
    assert runstate.sweep() == []  # the owner is alive: nothing touched
    assert os.path.isdir(made)
    child.send_signal(signal.SIGKILL)
    child.wait()
    removed = runstate.sweep()
    assert f"dir {made}" in removed and f"pid {sleeper}" in removed
    assert not os.path.exists(made)
    for _ in range(50):  # the killed sleeper is reaped by init
        if runstate.process_start(sleeper) is None or "Z" in open(f"/proc/{sleeper}/stat").read().split(")")[1][:3]:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the registered process group is still running")
    assert list(regdir.glob("*.jsonl")) == []


def test_normal_exit_removes_own_file_and_leftovers(regdir, tmp_path):
    code = (
        "import sys\n"
        "from callpath.probes import runstate\n"
        "d = runstate.make_temp_dir('test', base=sys.argv[1])\n"
        "e = runstate.make_temp_dir('test', base=sys.argv[1])\n"
        "runstate.remove_temp_dir(e)\n"
        "print(d)\n"
    )
    child = _child(code, regdir, str(tmp_path))
    made = child.stdout.read().strip()
    assert child.wait() == 0
    assert not os.path.exists(made)  # still registered at exit: undone
    assert list(regdir.glob("*.jsonl")) == []


def test_sweep_dead_run_file_by_hand(regdir, tmp_path):
    """Entries struck off are not undone; a reused pid (other start time) counts as dead."""
    keep, gone = tmp_path / "callpath-keep", tmp_path / "callpath-gone"
    keep.mkdir()
    gone.mkdir()
    me = os.getpid()
    f = regdir / f"{me}-1-{runstate.boot_id()}.jsonl"  # our pid, not our start time: a dead run whose pid we reuse
    lines = [{"op": "add", "kind": "dir", "value": str(keep)}, {"op": "add", "kind": "dir", "value": str(gone)},
             {"op": "del", "kind": "dir", "value": str(keep)}]
    f.write_text("".join(json.dumps(x) + "\n" for x in lines) + '{"op": "add", "ki')  # cut by the kill
    assert runstate.sweep() == [f"dir {gone}"]
    assert keep.exists() and not gone.exists() and not f.exists()


def test_dir_outside_callpath_names_is_never_deleted(regdir, tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (regdir / f"{_dead_pid()}-5-{runstate.boot_id()}.jsonl").write_text(json.dumps({"op": "add", "kind": "dir", "value": str(victim)}) + "\n")
    assert runstate.sweep() == []
    assert victim.exists()


def test_reused_pgid_is_not_killed(regdir):
    """A 'pid' entry whose leader now has another start time belongs to someone else."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        entry = {"op": "add", "kind": "pid", "value": str(other.pid), "start": "1"}
        (regdir / f"{_dead_pid()}-5-{runstate.boot_id()}.jsonl").write_text(json.dumps(entry) + "\n")
        assert runstate.sweep() == []
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_file_of_another_boot_or_kernel_is_never_swept(regdir, tmp_path):
    """Inside a lab VM the host's registry may be visible: its pids mean nothing there."""
    victim = tmp_path / "callpath-1-lab-host"
    victim.mkdir()
    f = regdir / f"{_dead_pid()}-5-0badb007.jsonl"
    f.write_text(json.dumps({"op": "add", "kind": "dir", "value": str(victim)}) + "\n")
    assert runstate.sweep() == []
    assert victim.exists() and f.exists()


def test_unsafe_registry_dir_is_not_used(tmp_path, monkeypatch):
    d = tmp_path / "open"
    d.mkdir()
    d.chmod(0o777)
    monkeypatch.setenv("CALLPATH_RUN_DIR", str(d))
    monkeypatch.setattr(runstate.tempfile, "gettempdir", lambda: str(tmp_path))
    assert runstate.run_dir() == tmp_path / f"callpath-{os.geteuid()}"


def test_unknown_kind_refused():
    with pytest.raises(ValueError):
        runstate.register("everything", "/")


def test_fake_tracefs_kprobe_event_and_instance_undo(tmp_path):
    """kprobe-event undo disables the event in callpath instances, then writes '-:GROUP/EVENT'."""
    tfs = tmp_path / "tracing"
    (tfs / "events" / "callpath_7" / "cp_p0").mkdir(parents=True)
    (tfs / "events" / "callpath_7" / "cp_p0" / "enable").write_text("1\n")
    inst = tfs / "instances" / "callpath-7"
    (inst / "events" / "callpath_7" / "cp_p0").mkdir(parents=True)
    (inst / "events" / "callpath_7" / "cp_p0" / "enable").write_text("1\n")
    other = tfs / "instances" / "admin" / "events" / "callpath_7" / "cp_p0"
    other.mkdir(parents=True)
    (other / "enable").write_text("1\n")
    (tfs / "kprobe_events").write_text("")
    assert runstate.undo("kprobe-event", f"{tfs}|callpath_7/cp_p0")
    assert (tfs / "kprobe_events").read_text() == "-:callpath_7/cp_p0\n"
    assert (inst / "events" / "callpath_7" / "cp_p0" / "enable").read_text().endswith("0\n")
    assert (other / "enable").read_text() == "1\n"  # another tool's instance: untouched
