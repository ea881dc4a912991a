"""Tests for callpath.probes.workload.

The ``root`` tests create real network namespaces and links on the running
kernel and send real packets; they are skipped when not root or when a
namespace cannot be created. A few pure tests (checksum, signal deferral,
argument errors) run everywhere.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from pyroute2 import IPRoute
from pyroute2 import netns as pr_netns

from callpath.probes import workload as wl
from callpath.probes.workload import (
    Progress,
    WorkloadError,
    WorkloadResult,
    WorkloadTerminated,
    available_workloads,
    leftover_namespaces,
    run_workload,
)

OUR_PREFIX = f"cp-{os.getpid()}-"


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def netns_mount_restored():
    """Tests that create namespaces directly leave /var/run/netns as they found it."""
    with wl._netns_dir_restored():
        yield


@pytest.fixture(scope="session")
def netns_capable():
    """Skip unless root and able to create + remove a named netns."""
    if os.geteuid() != 0:
        pytest.skip("needs root: creates network namespaces and links")
    name = f"{OUR_PREFIX}probe"
    try:
        pr_netns.create(name)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"cannot create a network namespace here: {exc!r}")
    finally:
        if name in pr_netns.listnetns():
            pr_netns.remove(name)
    assert name not in pr_netns.listnetns()


def _host_links() -> set[tuple[int, str]]:
    with IPRoute() as ipr:
        return {(msg["index"], msg.get("ifname")) for msg in ipr.link("dump")}


def _children() -> list[int]:
    """Live (or zombie) child processes of this process."""
    me, kids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                kids.append(int(entry))
    return kids


def _thread_netns() -> str:
    return os.readlink("/proc/thread-self/ns/net")


@pytest.fixture
def nothing_left(netns_capable):
    """Assert a test leaves no namespace, no host link and no foreign netns
    for the test thread behind."""
    baseline = leftover_namespaces()  # normally []: only other processes' runs
    children_before = set(_children())
    links_before = _host_links()
    netns_before = _thread_netns()
    yield
    assert _thread_netns() == netns_before, "thread left in another namespace"
    assert leftover_namespaces(OUR_PREFIX) == []
    # normally both are simply empty; other processes' runs may be listed
    assert set(leftover_namespaces()) <= set(baseline)
    assert {n for n in pr_netns.listnetns() if n.startswith("cp-")} <= set(baseline)
    assert _host_links() == links_before, "links appeared/disappeared in the host netns"
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # pyroute2's forked helpers must all be gone (none escaped into pytest)
    assert set(_children()) <= children_before


# --------------------------------------------------------------------------
# pure tests
# --------------------------------------------------------------------------


def test_registry_shape():
    workloads = available_workloads()
    assert set(workloads) == {"veth", "macvlan", "ipvlan"}
    for name, w in workloads.items():
        assert w.name == name
        assert w.description and "\n" not in w.description
        assert "veth" in w.modules
    assert workloads["macvlan"].modules == ("veth", "macvlan")
    assert workloads["ipvlan"].modules == ("veth", "ipvlan")


def test_unknown_workload_and_bad_packets():
    with pytest.raises(WorkloadError, match="unknown workload 'nope'.*veth"):
        run_workload("nope")
    with pytest.raises(WorkloadError, match="packets must be"):
        run_workload("veth", packets=0)


def test_icmp_echo_checksum():
    packet = wl._icmp_echo(0x1234, 7, b"abc")  # odd payload length
    assert packet[0] == 8 and packet[1] == 0
    assert struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert wl._checksum(packet) == 0  # valid Internet checksum sums to 0


def test_progress_message_is_str_with_phase():
    msg = Progress("veth", "sending", "50 UDP datagrams a->b")
    assert msg == "veth: sending: 50 UDP datagrams a->b"
    assert (msg.workload, msg.phase) == ("veth", "sending")


def test_sigterm_deferred_in_critical_section_then_raised():
    notes: list[str] = []
    before = signal.getsignal(signal.SIGTERM)
    reached_end_of_block = False
    with pytest.raises(WorkloadTerminated) as info:
        with wl._signal_handlers(notes):
            with wl._signals_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(1000):  # give the handler bytecode boundaries
                    pass
                time.sleep(0.01)
                reached_end_of_block = True
    assert reached_end_of_block
    assert info.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_forked_child_dies_on_sigterm_instead_of_raising():
    """pyroute2 forks helpers (netns.create, IPRoute(netns=...)) and stops
    them with SIGTERM; a child inheriting the handler must die, not raise
    WorkloadTerminated and run on in the parent's code."""
    with wl._signal_handlers([]):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
        if pid == 0:  # child: never leave this block
            try:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
                time.sleep(10)
            finally:
                os._exit(99)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status), f"child exited with {os.waitstatus_to_exitcode(status)}"
    assert os.WTERMSIG(status) == signal.SIGTERM


def test_module_status_values():
    assert wl.module_status("surely_not_a_module") not in {"loaded", "builtin", "loadable"}
    assert wl.module_status("veth") in {"loaded", "builtin", "loadable"}


# --------------------------------------------------------------------------
# real workloads
# --------------------------------------------------------------------------


def _check_interfaces(result: WorkloadResult, expected: dict[str, tuple[str, str]]):
    """expected: ifname -> (kind, namespace role)."""
    assert set(result.interfaces) == set(expected)
    for ifname, (kind, role) in expected.items():
        info = result.interfaces[ifname]
        assert info["kind"] == kind, ifname
        assert info["netns"].startswith(OUR_PREFIX) and info["netns"].endswith(f"-{role}")
        assert isinstance(info["ifindex"], int) and info["ifindex"] > 1  # 1 is lo
        assert len(info["address"].split(":")) == 6


@pytest.mark.root
def test_veth_delivers_udp_and_icmp(nothing_left):
    phases: list[str] = []
    result = run_workload("veth", packets=30, progress=lambda m: phases.append(m.phase))
    assert result.name == "veth"
    assert result.sent == {"udp a->b": 30, "icmp echo a->b": 30, "udp a->b napi": 30}
    assert result.received["udp a->b napi"] == 30  # with GRO on veth1: veth's NAPI receive path
    assert result.received["udp a->b"] > 0
    assert result.received["udp a->b"] == 30  # lossless inside one host
    assert result.received["icmp echo a->b requests at b"] > 0
    assert result.received["icmp echo a->b"] > 0  # echo replies counted in a
    _check_interfaces(result, {"veth0": ("veth", "a"), "veth1": ("veth", "b")})
    assert result.interfaces["veth0"]["ipv4"] == "198.51.100.1/24"
    assert result.interfaces["veth1"]["ipv4"] == "198.51.100.2/24"
    assert result.duration_s > 0
    assert phases[0] == "creating namespaces"
    assert {"creating links", "configuring", "sending", "cleanup"} <= set(phases)
    assert phases[-2:] == ["cleanup", "done"]


@pytest.mark.root
def test_macvlan_bridge_traffic(nothing_left):
    result = run_workload("macvlan", packets=20)
    assert result.sent == {"udp m0->m1": 20, "udp broadcast m0": 5, "udp m0->peer": 20,
                           "udp peer->m0": 20, "udp peer->lower0": 20}
    # the receive side: to a macvlan (rx_handler -> ANOTHER) and to the lower device (-> PASS)
    assert result.received["udp peer->m0"] == 20 and result.received["udp peer->lower0"] == 20
    assert result.received["udp m0->m1"] > 0
    assert result.received["udp m0->peer"] > 0
    assert result.received["udp broadcast m0 at m1"] > 0
    assert result.received["udp broadcast m0 at peer"] > 0
    assert result.received["arp broadcast at m1"] >= 1  # m0 resolving m1
    expected = {
        "lower0": ("veth", "lower"), "peer0": ("veth", "peer"),
        "mv0": ("macvlan", "m0"), "mv1": ("macvlan", "m1"),
    }
    if "tap0" in result.interfaces:  # the macvtap link-creation step, where the kernel has macvtap
        expected["tap0"] = ("macvtap", "lower")
    else:
        assert any(n.startswith("macvtap link not created") for n in result.notes)
    _check_interfaces(result, expected)
    assert result.interfaces["mv0"]["mode"] == "bridge"
    assert result.interfaces["mv1"]["mode"] == "bridge"
    # four distinct namespaces, each macvlan in its own
    assert len({i["netns"] for i in result.interfaces.values()}) == 4


@pytest.mark.root
def test_ipvlan_unsupported_or_runs(nothing_left):
    phases: list[str] = []
    try:
        result = run_workload("ipvlan", packets=10, progress=lambda m: phases.append(m.phase))
    except WorkloadError as exc:
        assert str(exc).startswith(
            "ipvlan: kernel does not support link kind 'ipvlan' (module not available")
        assert "cleanup" in phases  # it got as far as creating links, then cleaned
    else:  # kernel with ipvlan: check the real traffic instead
        assert result.received["udp ipv0->ipv1"] > 0
        assert result.interfaces["ipv0"]["kind"] == "ipvlan"
        assert result.interfaces["ipv1"]["kind"] == "ipvlan"


class Injected(Exception):
    pass


@pytest.mark.root
@pytest.mark.parametrize("name", ["veth", "macvlan"])
@pytest.mark.parametrize("phase", ["creating links", "configuring", "sending"])
def test_exception_mid_run_cleans_up(nothing_left, name, phase):
    created: list[str] = []

    def progress(msg):
        if msg.phase == phase:
            created.extend(leftover_namespaces(OUR_PREFIX))
            raise Injected(msg)

    with pytest.raises(Injected):
        run_workload(name, progress=progress)
    assert created, "namespaces should have existed when the exception was injected"


@pytest.mark.root
def test_keyboard_interrupt_at_sending_cleans_up(nothing_left):
    def progress(msg):
        if msg.phase == "sending":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_workload("macvlan", progress=progress)


@pytest.mark.root
def test_sigterm_at_sending_cleans_up(nothing_left):
    def progress(msg):
        if msg.phase == "sending":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # interrupted by the handler's exception

    with pytest.raises(WorkloadTerminated) as info:
        run_workload("veth", progress=progress)
    assert info.value.signum == signal.SIGTERM


@pytest.mark.root
def test_sigterm_during_cleanup_is_deferred(nothing_left):
    def progress(msg):
        if msg.phase == "cleanup":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)

    with pytest.raises(WorkloadTerminated):
        run_workload("veth", packets=3, progress=progress)


@pytest.mark.root
def test_progress_error_at_cleanup_still_cleans(nothing_left):
    def progress(msg):
        if msg.phase == "cleanup":
            raise Injected("at cleanup")

    with pytest.raises(Injected):
        run_workload("macvlan", packets=3, progress=progress)


@pytest.mark.root
def test_runs_in_a_worker_thread(nothing_left):
    """setns() is per thread: a worker thread's run must not move the main
    thread, and must restore its own namespace."""
    out: dict = {}

    def worker():
        out["before"] = _thread_netns()
        out["result"] = run_workload("veth", packets=5)
        out["after"] = _thread_netns()

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert not t.is_alive()
    assert out["before"] == out["after"]
    assert out["result"].received["udp a->b"] > 0
    assert any("not in the main thread" in n for n in out["result"].notes)


@pytest.mark.root
def test_two_runs_get_distinct_namespaces(nothing_left):
    a = run_workload("veth", packets=1)
    b = run_workload("veth", packets=1)
    assert a.interfaces["veth0"]["netns"] != b.interfaces["veth0"]["netns"]
    assert a.interfaces["veth0"]["netns"].startswith(OUR_PREFIX)


CHILD = textwrap.dedent("""
    import os, sys, time
    from callpath.probes.workload import run_workload, WorkloadTerminated, leftover_namespaces
    def progress(msg):
        if msg.phase == "sending":
            print("READY", flush=True)
            time.sleep(30)
    try:
        run_workload(sys.argv[1], progress=progress)
    except WorkloadTerminated as exc:
        print("TERMINATED", leftover_namespaces(f"cp-{os.getpid()}-"), flush=True)
        sys.exit(128 + exc.signum)
    except KeyboardInterrupt:
        print("INTERRUPTED", leftover_namespaces(f"cp-{os.getpid()}-"), flush=True)
        sys.exit(130)
    print("FINISHED", flush=True)
""")


@pytest.mark.root
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_external_signal_to_a_running_process(nothing_left, signum):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, "macvlan"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.strip() == "READY", child.stderr.read()
        assert len(leftover_namespaces(f"cp-{child.pid}-")) == 4
        child.send_signal(signum)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    expected = "INTERRUPTED []" if signum == signal.SIGINT else "TERMINATED []"
    assert out.strip() == expected, err
    assert child.returncode == 128 + signum
    assert leftover_namespaces(f"cp-{child.pid}-") == []


@pytest.mark.root
def test_remove_leftover_namespaces_only_stale(nothing_left):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale, live = f"cp-{dead_pid}-0-stale", f"{OUR_PREFIX}0-live"
    pr_netns.create(stale)
    pr_netns.create(live)
    try:
        assert {stale, live} <= set(leftover_namespaces())
        removed = wl.remove_leftover_namespaces()
        assert stale in removed
        assert not [n for n in removed if n.startswith(OUR_PREFIX)]
        assert leftover_namespaces(OUR_PREFIX) == [live]
    finally:
        for name in (stale, live):
            if name in pr_netns.listnetns():
                pr_netns.remove(name)


@pytest.mark.root
def test_run_leaves_netns_mount_as_found(netns_capable):
    before = wl._is_mountpoint(wl._NETNS_RUN_DIR)
    run_workload("veth", packets=2)
    assert wl._is_mountpoint(wl._NETNS_RUN_DIR) == before
    assert leftover_namespaces(OUR_PREFIX) == []
