"""A `callpath verify` SIGKILLed while its lab VM runs leaves nothing once `callpath cleanup` ran:
no vng/QEMU, no staging directory, no registry file. One lab boot (about 1 minute under TCG);
run it under `flock /tmp/callpath-lab.lock`."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from callpath.probes import labvm, runstate

pytestmark = pytest.mark.lab

SPEC = Path(__file__).resolve().parent.parent / "specs" / "macvlan-newlink-xmit.txt"


def _qemu_with(text: str) -> list[int]:
    """Pids of qemu-system-* processes whose command line mentions ``text``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and b"qemu-system" in argv[0] and any(text.encode() in a for a in argv):
            found.append(int(d.name))
    return found


def _running_in_group(pgid: int) -> list[int]:
    """Pids of live (not zombie) processes in process group ``pgid``."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if d.name.isdigit() and int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(d.name))
    return found


def test_sigkill_mid_run_then_cleanup_leaves_nothing(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the lab VM run needs root")
    try:
        kernel = labvm.choose_kernel()
        labvm.find_vng()
    except labvm.LabError as err:
        pytest.skip(f"no lab VM here: {err}")
    proc = subprocess.Popen([sys.executable, "-m", "callpath", "verify", str(SPEC), "--workload", "macvlan",
                             "--packets", "5", "--kernel", kernel.release, "--out", str(tmp_path / "out")],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True)
    booted = False
    deadline = time.monotonic() + 300
    watchdog = threading.Timer(300, proc.kill)  # a VM that never boots must not hang the test
    watchdog.start()
    try:
        for line in proc.stderr:  # wait until callpath runs in the guest: the VM has booted
            # (every progress line starts "callpath: "; the guest's own start "[lab  NNs] callpath:")
            if re.search(r"\[lab\s+\d+s\] callpath:", line):
                booted = True
                break
            if time.monotonic() > deadline:
                break
        assert booted, "the lab VM did not boot"
        registry = list(runstate.run_dir().glob(f"{proc.pid}-*.jsonl"))
        assert len(registry) == 1
        entries = [json.loads(x) for x in registry[0].read_text().splitlines()]
        (stage,) = [e["value"] for e in entries if e["kind"] == "dir"]
        (pgid,) = [int(e["value"]) for e in entries if e["kind"] == "pid"]
        assert Path(stage).is_dir() and _qemu_with(stage)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    clean = subprocess.run([sys.executable, "-m", "callpath", "cleanup"], capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    for _ in range(100):  # SIGKILLed QEMU: reaped by init a moment later
        if not _qemu_with(stage):
            break
        time.sleep(0.1)
    assert not _qemu_with(stage), "QEMU left running"
    assert not Path(stage).exists()
    assert not registry[0].exists()
    for _ in range(100):  # nothing of vng's process group runs (zombies wait for init to reap them)
        if not _running_in_group(pgid):
            break
        time.sleep(0.1)
    assert not _running_in_group(pgid), f"left in vng's process group: {_running_in_group(pgid)}"
