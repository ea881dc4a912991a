"""Lab/host orchestration: the lab command line, what reaches virtme-ng, root checks (no VM booted)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from callpath.cli import main
from callpath.probes import labvm, runstate, session

SPEC = Path(__file__).resolve().parent.parent / "specs" / "macvlan-newlink-xmit.txt"
LAB = labvm.LabKernel("6.1.0-56-amd64", Path("/boot/vmlinuz-6.1.0-56-amd64"), True)
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lab-6.1.0-56-amd64-all-paths.parquet"
HOSTILE = ["x;touch PWNED;echo", "a b", "a=etc", "$(touch PWNED)", "it's"]


@pytest.fixture(autouse=True)
def fresh_registry(tmp_path, monkeypatch):
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    monkeypatch.setenv("CALLPATH_RUN_DIR", str(d))
    monkeypatch.setattr(runstate, "_reg", runstate._Registry())
    return d


def test_traffic_argv_and_kwargs():
    t = session.Traffic(workloads=["macvlan", "veth"], packets=7, duration=2.5, command=["./x", "-n", "3"],
                        ringbuf_pages=64)
    assert t.argv() == ["--packets", "7", "--ringbuf-pages", "64", "--workload", "macvlan", "--workload", "veth",
                        "--duration", "2.5", "--", "./x", "-n", "3"]
    assert t.kwargs() == dict(workloads=["macvlan", "veth"], packets=7, duration=2.5, until_interrupt=False,
                              command=["./x", "-n", "3"], ringbuf_pages=64)
    assert session.Traffic().argv() == ["--packets", "50", "--ringbuf-pages", "1024"]


@pytest.mark.parametrize("bad", ["/tmp/x;touch /tmp/PWNED;echo", "/tmp/a b", "/tmp/a=/etc", "/tmp/$(id)", "-x", "a\nb"])
def test_vng_refuses_unsafe_option_values(bad):
    with pytest.raises(labvm.LabError, match="refusing to pass"):
        labvm.check_vng_arg("the shared directory", bad)


def _fake_lab_run(calls, write_trace=True):
    """Stand-in for run_in_lab: records the vng argv and acts like the guest's `callpath record`."""

    def run(lab, inner, rwdirs, progress=None, timeout_s=0, append=None, cwd=None):
        calls.append(labvm.vng_command(lab, inner, rwdirs, append=append))
        stage = rwdirs[0]
        if write_trace:
            from callpath.analysis.trace import read_trace, write_trace as wt

            t = read_trace(FIXTURE)
            t.meta["specs"] = [str(p) for p in (stage / "specs").iterdir()]
            wt(t, stage / "trace.parquet")
            (stage / "module-init-macvtap.txt").write_text("# tracer: nop\n")
        return 0

    return run


@pytest.mark.parametrize("name", HOSTILE)
def test_verify_in_lab_never_passes_user_paths_to_vng(tmp_path, monkeypatch, name):
    monkeypatch.setattr(labvm, "find_vng", lambda: "/x/vng")
    calls = []
    monkeypatch.setattr(labvm, "run_in_lab", _fake_lab_run(calls))
    spec = tmp_path / name / "doc.txt"
    spec.parent.mkdir()
    shutil.copyfile(SPEC, spec)
    out = tmp_path / f"out {name}"
    trace = session.verify_in_lab(LAB, [spec], out, session.Traffic(workloads=["macvlan"]), lambda m: None)
    (cmd,) = calls
    rw = cmd[cmd.index("--rwdir") + 1]
    assert Path(rw).name.startswith("callpath-") and all(labvm.SAFE_VNG_ARG.match(a) for a in cmd[:-1]
                                                            if a != "--" and a not in labvm.TCG_OPTS.values())
    assert name not in " ".join(cmd) and str(tmp_path) not in " ".join(cmd)
    assert cmd[-1] == f"/bin/sh {rw}/job.sh"
    # results copied out, the trace names the host's documents, the staging directory is gone
    from callpath.analysis.trace import read_trace

    assert trace == out / "trace.parquet" and (out / "module-init-macvtap.txt").exists()
    assert read_trace(trace).meta["specs"] == [str(spec.resolve())]
    assert not Path(rw).exists() and runstate.leftover() == []


def test_lab_job_script_quotes_everything(tmp_path, monkeypatch):
    monkeypatch.setattr(labvm, "find_vng", lambda: "/x/vng")
    seen = {}

    def run(lab, inner, rwdirs, **kw):
        seen["job"] = Path(inner[1]).read_text()
        seen["append"] = kw.get("append")
        return 1

    monkeypatch.setattr(labvm, "run_in_lab", run)
    traffic = session.Traffic(command=["sh", "-c", "echo 'a b'; touch PWNED"])
    with pytest.raises(session.SessionError, match="lab VM run failed"):
        session.verify_in_lab(LAB, [SPEC], tmp_path / "o", traffic, lambda m: None)
    assert "'echo '\"'\"'a b'\"'\"'; touch PWNED'" in seen["job"]
    assert "--where 'lab VM, virtme-ng, QEMU TCG, kernel 6.1.0-56-amd64'" in seen["job"]
    assert not (tmp_path / "o").exists()  # a failed run leaves no empty report folder


@pytest.mark.skipif(not shutil.which("vng", path=str(Path(labvm.sys.executable).parent)) and not shutil.which("vng"),
                    reason="virtme-ng not installed")
def _installed_lab():
    """An installed lab kernel (the release moves with Debian's updates), else the fake one."""
    return next((k for k in labvm.list_lab_kernels() if k.image.exists()), LAB)


@pytest.mark.skipif(not _installed_lab().image.exists(), reason="no lab kernel image")
def test_vng_dry_run_runs_no_host_command(tmp_path, monkeypatch):
    """The command callpath gives vng, run through vng --dry-run: no file appears from a hostile --out."""
    lab = _installed_lab()
    calls = []
    monkeypatch.setattr(labvm, "run_in_lab", _fake_lab_run(calls, write_trace=True))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "x;touch PWNED;echo"
    session.verify_in_lab(lab, [SPEC], out, session.Traffic(workloads=["macvlan"]), lambda m: None)
    cmd = calls[0]
    rw = Path(cmd[cmd.index("--rwdir") + 1])
    rw.mkdir()  # gone after the run: make it again for the dry run
    try:
        env = dict(os.environ, PATH=str(Path(cmd[0]).parent) + os.pathsep + os.environ["PATH"])
        proc = subprocess.run([cmd[0], "--dry-run", *cmd[1:]], capture_output=True, text=True, env=env, timeout=120,
                              cwd=tmp_path)
    finally:
        rw.rmdir()
    assert proc.returncode == 0, proc.stderr
    assert f"path={rw}," in proc.stdout  # the one share, exactly the staging directory
    assert not list(tmp_path.rglob("PWNED")) and not Path("/tmp/PWNED").exists()


# -- root checks: before any work ------------------------------------------------

@pytest.mark.parametrize("where", [[], ["--host"], ["--kernel", "6.1.0-56-amd64"]])
def test_verify_as_non_root_says_needs_root_first(tmp_path, monkeypatch, capsys, where):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(labvm, "choose_kernel", lambda *a: pytest.fail("lab chosen before the root check"))
    monkeypatch.setattr(runstate, "sweep", lambda *a: pytest.fail("swept before the root check"))
    out = tmp_path / "o"
    assert main(["verify", str(SPEC), "--out", str(out), *where]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs root" in err[0]
    assert ("kprobes" in err[0]) and ("lab VM" in err[0] or "--host" in where)
    assert not out.exists()


# -- the interrupt message is true to what the command did -------------------------

def _interrupting(action):
    def cmd(_args):
        action()
        raise KeyboardInterrupt

    return cmd


def test_interrupt_of_a_command_that_made_nothing(monkeypatch, capsys):
    from callpath import cli

    monkeypatch.setattr(cli, "cmd_lint", _interrupting(lambda: None))
    assert main(["lint", "whatever"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "callpath: interrupted"


def test_interrupt_reports_removed_and_left(tmp_path, monkeypatch, capsys):
    from callpath import cli

    def made_and_removed():
        d = runstate.make_temp_dir("t", base=tmp_path)
        runstate.remove_temp_dir(d)

    monkeypatch.setattr(cli, "cmd_verify", _interrupting(made_and_removed))
    assert main(["verify"]) == 130
    assert "all 1 objects this run created on the host were removed" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_verify", _interrupting(lambda: runstate.make_temp_dir("t", base=tmp_path)))
    assert main(["verify"]) == 130
    err = capsys.readouterr().err
    assert "left behind: dir " in err and "callpath cleanup" in err
    runstate.remove_temp_dir(Path(runstate.leftover()[0][1]))


def test_cleanup_command(tmp_path, monkeypatch, capsys, fresh_registry):
    import json

    dead = subprocess.Popen(["true"])
    dead.wait()
    victim = tmp_path / "callpath-99-lab-dead"
    victim.mkdir()
    (fresh_registry / f"{dead.pid}-0-{runstate.boot_id()}.jsonl").write_text(json.dumps({"op": "add", "kind": "dir", "value": str(victim)}) + "\n")
    assert main(["cleanup"]) == 0
    assert "removed 1 objects" in capsys.readouterr().out
    assert not victim.exists()
