"""Lab VM selection and command line (no VM is booted here; see test_lab.py for that)."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

from callpath.probes import labvm


def fake_boot(tmp_path, releases, with_headers):
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    boot.mkdir()
    for r in releases:
        (boot / f"vmlinuz-{r}").write_bytes(b"")
        if r in with_headers:
            (mods / r / "build").mkdir(parents=True)
    return str(boot), str(mods)


def test_list_sorted_newest_first(tmp_path, monkeypatch):
    boot, mods = fake_boot(tmp_path, ["6.1.0-9-amd64", "6.12.1-amd64", "6.1.0-56-amd64"], {"6.1.0-56-amd64"})
    ks = labvm.list_lab_kernels(boot, mods)
    assert [k.release for k in ks] == ["6.12.1-amd64", "6.1.0-56-amd64", "6.1.0-9-amd64"]
    monkeypatch.setattr(labvm, "list_lab_kernels", lambda: ks)
    # the default is the newest kernel that has headers (bcc needs them)
    assert labvm.choose_kernel().release == "6.1.0-56-amd64"
    with pytest.raises(labvm.LabError, match="no headers"):
        labvm.choose_kernel("6.12.1-amd64")
    with pytest.raises(labvm.LabError, match="not installed"):
        labvm.choose_kernel("5.10.0-1-amd64")


def test_no_kernel_at_all(monkeypatch):
    monkeypatch.setattr(labvm, "list_lab_kernels", lambda: [])
    with pytest.raises(labvm.LabError, match="make setup"):
        labvm.choose_kernel()


def test_vng_command(tmp_path, monkeypatch):
    monkeypatch.setattr(labvm, "find_vng", lambda: "/x/vng")
    k = labvm.LabKernel("6.1.0-56-amd64", tmp_path / "vmlinuz", True)
    cmd = labvm.vng_command(k, ["python", "-m", "callpath", "record", "--out", "/o/t.parquet"], [tmp_path])
    assert cmd[:3] == ["/x/vng", "--run", str(tmp_path / "vmlinuz")]
    assert "--disable-kvm" in cmd and cmd[cmd.index("--rwdir") + 1] == str(tmp_path)
    assert cmd[-2] == "--" and cmd[-1] == "python -m callpath record --out /o/t.parquet"


def _fake_vng(monkeypatch, tmp_path, argv):
    monkeypatch.setattr(labvm, "find_vng", lambda: sys.executable)
    monkeypatch.setattr(labvm, "vng_command", lambda *a, **k: argv)
    monkeypatch.setenv("CALLPATH_RUN_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir(mode=0o700)


def test_lab_timeout_holds_while_the_guest_is_silent(tmp_path, monkeypatch):
    """Before: the timeout was checked only when the guest printed a line."""
    _fake_vng(monkeypatch, tmp_path, [sys.executable, "-c", "import time; time.sleep(120)"])
    k = labvm.LabKernel("6.1.0-56-amd64", tmp_path / "vmlinuz", True)
    t0 = time.monotonic()
    with pytest.raises(labvm.LabError, match="exceeded"):
        labvm.run_in_lab(k, ["true"], [tmp_path], timeout_s=1.5)
    assert time.monotonic() - t0 < 20


def test_vm_process_group_dies_with_callpath(tmp_path):
    """SIGKILL the process running run_in_lab: the fake VM's whole process group goes too."""
    code = textwrap.dedent(f"""
        import sys
        from callpath.probes import labvm
        labvm.find_vng = lambda: sys.executable
        labvm.vng_command = lambda *a, **k: ["sh", "-c", "sleep 300 & echo $!; wait"]
        k = labvm.LabKernel("x", "/nonexistent", True)
        labvm.run_in_lab(k, ["true"], [], progress=lambda m: print(m, flush=True))
    """)
    (tmp_path / "run").mkdir(mode=0o700)
    env = dict(os.environ, CALLPATH_RUN_DIR=str(tmp_path / "run"))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    child.stdout.readline()  # "booting lab VM ..."
    sleeper = int(child.stdout.readline().split()[-1])
    child.kill()
    child.wait()
    for _ in range(100):
        try:
            state = open(f"/proc/{sleeper}/stat").read().rsplit(")", 1)[1].split()[0]
        except OSError:
            break
        if state == "Z":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the VM's process group outlived callpath")
