"""Run a Python script with a lab kernel's headers where bcc looks for the running kernel's.

bcc reads /lib/modules/$(uname -r)/build; this machine's kernel ships none. A
private mount namespace (``unshare -m``) shows bcc a lab kernel's headers there
instead, so BPF C compiles and loads on the running kernel in a second.
"""

import os
import subprocess
import sys
from pathlib import Path


def run_with_lab_headers(tmp_path: Path, release: str, script: Path, *args: str,
                         timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python script args...`` with ``release``'s headers under /lib/modules/$(uname -r)."""
    fake = tmp_path / "modules" / os.uname().release
    fake.mkdir(parents=True, exist_ok=True)
    for link in ("build", "source"):
        target = os.path.realpath(f"/lib/modules/{release}/{link}")
        if os.path.exists(target) and not (fake / link).exists():
            (fake / link).symlink_to(target)
    return subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind "$1" /lib/modules && shift && exec "$@"', "sh",
                           str(tmp_path / "modules"), sys.executable, str(script), *args],
                          capture_output=True, text=True, timeout=timeout)
