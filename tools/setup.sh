#!/usr/bin/env bash
# Install what callpath needs on a Debian 12 machine, idempotently, with progress.
#   Debian packages: QEMU, busybox (virtme-ng's initramfs), Debian's kernel and its
#   headers (the lab VM kernel; bcc compiles against the headers), bcc's Python module,
#   bpftrace (benchmarks/bench_overhead.py measures callpath beside it).
#   A venv from the system Python with --system-site-packages (so `import bcc` works),
#   with the project, virtme-ng, pytest and hypothesis.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
say() { printf 'setup: %s\n' "$*" >&2; }

APT_PKGS=(qemu-system-x86 busybox-static linux-image-amd64 linux-headers-amd64 python3-bpfcc bpfcc-tools bpftrace python3-venv kmod chromium chromium-driver python3-selenium)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" != 0 ]; then
    say "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"; exit 1
  fi
  say "apt: installing ${missing[*]} (the kernel and QEMU take a minute or two)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || { say "apt-get update failed"; exit 1; }
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/callpath-apt.log 2>&1 \
    || { say "apt-get install failed; last lines of /tmp/callpath-apt.log:"; tail -n 20 /tmp/callpath-apt.log >&2; exit 1; }
else
  say "apt: all Debian packages present"
fi

# A newer Debian kernel beside 6.1, so documents can be compared across kernels
# (`callpath verify --kernel all`). NEW_KERNEL=RELEASE picks one, NEW_KERNEL=none skips.
# The bcc program needs no kernel-internal header (field offsets come from BTF),
# so Debian 12's bcc 0.26 compiles it against these headers too.
NEW_KERNEL=${NEW_KERNEL:-}
if [ "$NEW_KERNEL" != none ]; then
  have=$(for d in /lib/modules/6.12.*+deb12-amd64; do [ -e "$d/build" ] && [ -e "/boot/vmlinuz-${d##*/}" ] && echo "${d##*/}" || true; done 2>/dev/null | sort -V | tail -n1)
  if [ -z "$NEW_KERNEL" ] && [ -n "$have" ]; then
    say "apt: newer lab kernel $have present"
  else
    if [ -z "$NEW_KERNEL" ]; then
      NEW_KERNEL=$(apt-cache search --names-only '^linux-headers-6\.12\.[0-9]+\+deb12-amd64$' 2>/dev/null \
                   | awk '{print $1}' | sed 's/^linux-headers-//' | sort -V | tail -n1)
      NEW_KERNEL=${NEW_KERNEL:-6.12.117+deb12-amd64}
    fi
    if [ -e "/lib/modules/$NEW_KERNEL/build" ] && [ -e "/boot/vmlinuz-$NEW_KERNEL" ]; then
      say "apt: newer lab kernel $NEW_KERNEL present"
    elif [ "$(id -u)" != 0 ]; then
      say "newer lab kernel $NEW_KERNEL missing (run as root, or: sudo apt-get install linux-image-$NEW_KERNEL-unsigned linux-headers-$NEW_KERNEL)"; exit 1
    else
      say "apt: installing newer lab kernel $NEW_KERNEL with its headers beside the other lab kernels (a minute or two)"
      export DEBIAN_FRONTEND=noninteractive
      apt-get install -y -q --no-install-recommends "linux-image-$NEW_KERNEL-unsigned" "linux-headers-$NEW_KERNEL" \
          >/tmp/callpath-apt-kernel.log 2>&1 \
        || { say "apt refused linux-image-$NEW_KERNEL-unsigned / linux-headers-$NEW_KERNEL (NEW_KERNEL=none skips it); last lines of /tmp/callpath-apt-kernel.log:"
             tail -n 20 /tmp/callpath-apt-kernel.log >&2; exit 1; }
    fi
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "venv: creating $VENV from /usr/bin/python3 with --system-site-packages (for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
"$VENV/bin/python" -c 'import bcc' 2>/dev/null || { say "venv: bcc is not importable from $VENV (python3-bpfcc missing?)"; exit 1; }
stamp="$VENV/.callpath-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "venv: installing callpath (editable) with virtme-ng, pytest, hypothesis"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[lab,test]' 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c 'import callpath.cli, pyroute2, pandas, pyarrow, matplotlib' || { say "venv: install failed"; exit 1; }
  touch "$stamp"
else
  say "venv: $VENV up to date"
fi
labs=$(for k in /boot/vmlinuz-*; do r=${k#/boot/vmlinuz-}; [ -e "/lib/modules/$r/build" ] && echo "$r" || true; done 2>/dev/null | sort -V | tr '\n' ' ')
# Issue 10: DWARF of the modules the shipped specs need, for each lab kernel (inlined steps are
# probed at their inline sites). Once per kernel: about 1.5 minutes for 6.1 (download 11 s,
# extraction 70 s, index 12 s), then cached in /var/cache/callpath/debuginfo. DEBUGINFO=none skips.
if [ "${DEBUGINFO:-}" != none ] && [ "$(id -u)" = 0 ] && [ -n "$labs" ]; then
  # shellcheck disable=SC2086
  VENV=$VENV tools/fetch-debuginfo.sh $labs || say "debug info: not fetched (inlined steps will be reported absent)"
fi
say "ready: lab kernels ${labs:-none}(with headers), running kernel $(uname -r)"
