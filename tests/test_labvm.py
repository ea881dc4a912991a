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
    assert cmd[:4] == ["/x/vng", "--qemu-opts=-accel tcg,thread=single", "--run", str(tmp_path / "vmlinuz")]
    assert "--disable-kvm" in cmd and cmd[cmd.index("--rwdir") + 1] == str(tmp_path)
    assert cmd[-2] == "--" and cmd[-1] == "python -m callpath record --out /o/t.parquet"
    # the guest kernel's console joins the output at warning level, after any caller's options
    cmd = labvm.vng_command(k, ["true"], [tmp_path], append="ftrace=function_graph", console=True)
    assert cmd[:3] == ["/x/vng", "--verbose", "--qemu-opts=-accel tcg,thread=single"]
    assert "--qemu-opts=-accel tcg,thread=multi" in labvm.vng_command(k, ["true"], [], tcg_threads="multi")
    with pytest.raises(labvm.LabError, match="single or multi"):
        labvm.vng_command(k, ["true"], [], tcg_threads="x;reboot")
    assert cmd[cmd.index("--append") + 1] == "loglevel=5 ftrace=function_graph"


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


BOOT = "[    0.000000] Linux version 6.1.0-56-amd64"
LOCKUP = [
    "[  407.257535] watchdog: BUG: soft lockup - CPU#1 stuck for 45s! [python:310]",
    "[  407.257927] Call Trace:",
    "[  407.257927]  <TASK>",
    "[  407.257927]  ? arch_unregister_cpu+0x20/0x20",
    "[  407.257927]  on_each_cpu_cond_mask+0x20/0x40",
    "[  407.257927]  text_poke_bp_batch+0xb7/0x300",
]


def _guest(tmp_path, lines, then="time.sleep(120)", later=None):
    """A fake vng: counts its boots in tmp_path/boots, prints ``lines`` (``later`` from the
    second boot on, when given), then runs ``then``."""
    later = lines if later is None else later
    return [sys.executable, "-c",
            f"import time, pathlib; p = pathlib.Path({str(tmp_path / 'boots')!r}); "
            f"p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else '1'); "
            f"print({chr(10).join(lines)!r} if p.read_text() == '1' else {chr(10).join(later)!r}, flush=True); "
            f"{then}"]


def test_guest_kernel_lockup_is_reported_and_booted_again(tmp_path, monkeypatch):
    """Measured on 6.1 under TCG: a soft lockup while ftrace patched text; the guest never finished."""
    _fake_vng(monkeypatch, tmp_path, _guest(tmp_path, [BOOT, "callpath: recording", *LOCKUP]))
    monkeypatch.setattr(labvm, "FATAL_GRACE_S", 0.5)
    k = labvm.LabKernel("6.1.0-56-amd64", tmp_path / "vmlinuz", True)
    seen = []
    t0 = time.monotonic()
    with pytest.raises(labvm.LabGuestError, match="soft lockup") as err:
        labvm.run_in_lab(k, ["true"], [tmp_path], progress=seen.append, timeout_s=100,
                         console_log=tmp_path / "console.log")
    assert time.monotonic() - t0 < 30
    assert (tmp_path / "boots").read_text() == "2"  # booted once more, then gave up
    assert "on_each_cpu_cond_mask <- text_poke_bp_batch" in str(err.value)
    # kernel lines stay out of the progress stream, apart from the one-line summary
    assert not any("Call Trace" in m for m in seen)
    assert sum("callpath: recording" in m for m in seen) == 2
    assert any("booting again (boot 2 of 2)" in m for m in seen)
    assert "text_poke_bp_batch+0xb7/0x300" in (tmp_path / "console.log").read_text()


def test_guest_lockup_then_a_good_boot_returns_its_status(tmp_path, monkeypatch):
    then = "import sys; sys.exit(7 if p.read_text() == '2' else time.sleep(120))"
    _fake_vng(monkeypatch, tmp_path, _guest(tmp_path, LOCKUP, then=then, later=[BOOT, "callpath: done"]))
    monkeypatch.setattr(labvm, "FATAL_GRACE_S", 0.5)
    k = labvm.LabKernel("6.1.0-56-amd64", tmp_path / "vmlinuz", True)
    assert labvm.run_in_lab(k, ["true"], [tmp_path], timeout_s=100) == 7


def test_vng_chatter_before_the_kernel_shown_only_when_the_boot_fails(tmp_path, monkeypatch):
    """vng --verbose prints its own lines (``virtme: waiting for virtiofsd``) before the kernel's."""
    _fake_vng(monkeypatch, tmp_path, _guest(tmp_path, ["virtme: waiting for virtiofsd to start", BOOT, "guest says"],
                                            then="pass"))
    k = labvm.LabKernel("6.1.0-56-amd64", tmp_path / "vmlinuz", True)
    seen = []
    assert labvm.run_in_lab(k, ["true"], [tmp_path], progress=seen.append, timeout_s=100) == 0
    assert any(m.endswith("] guest says") for m in seen) and not any("virtiofsd" in m for m in seen)
    monkeypatch.setattr(labvm, "vng_command", lambda *a, **kw: [sys.executable, "-c",
                                                                "import sys; print('qemu: no such image'); sys.exit(1)"])
    seen.clear()
    assert labvm.run_in_lab(k, ["true"], [tmp_path], progress=seen.append, timeout_s=100) == 1
    assert "[lab] qemu: no such image" in seen


def test_silent_guest_is_given_up(tmp_path, monkeypatch):
    """Kernel lines (here a harmless warning) do not count as the command's output."""
    _fake_vng(monkeypatch, tmp_path, _guest(tmp_path, ["[    1.000000] some warning"]))
    k = labvm.LabKernel("6.1.0-56-amd64", tmp_path / "vmlinuz", True)
    with pytest.raises(labvm.LabGuestError, match="printed nothing for 2 s"):
        labvm.run_in_lab(k, ["true"], [tmp_path], timeout_s=100, silent_s=2, attempts=1)
    assert (tmp_path / "boots").read_text() == "1"


def test_vm_process_group_dies_with_callpath(tmp_path):
    """SIGKILL the process running run_in_lab: the fake VM's whole process group goes too."""
    code = textwrap.dedent(f"""
        import sys
        from callpath.probes import labvm
        labvm.find_vng = lambda: sys.executable
        labvm.vng_command = lambda *a, **k: ["sh", "-c", "echo '[    0.000000] Linux'; sleep 300 & echo $!; wait"]
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
