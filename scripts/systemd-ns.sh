#!/usr/bin/env bash
# Boots a real systemd as PID 1 of its own PID and mount namespace, over a
# throwaway overlay of the root filesystem, for the service test: whatever
# systemd and the unit write (its boot-time tmpfiles step empties /tmp!)
# lands in a tmpfs and is gone when it stops; the host's /tmp is never
# touched. The network is shared, so the unit reaches simulators and servers
# on this machine's loopback. Only basic.target is booted: services
# installed on the machine are not started. Needs root, util-linux and
# systemd (scripts/setup-machine.sh installs it).
#
#   systemd-ns.sh start [SECONDS]   prints the PID (outside) of that systemd
#   systemd-ns.sh run PID CMD...    runs CMD inside (systemctl, journalctl, ...)
#   systemd-ns.sh stop PID
# Each is found by its own overlay directory, but all share this machine's
# cgroup tree: two must not run the same unit at once.
set -euo pipefail
case "${1:-}" in
  start)
    secs=${2:-600}
    base=$(mktemp -d /run/victron-poller-systemd.XXXXXX)
    setsid timeout "$secs" unshare --pid --fork --mount --propagation private sh -c "
      set -e
      mount --make-rprivate /
      mount -t tmpfs -o size=2g tmpfs $base
      mkdir -p $base/upper $base/work $base/root
      mount -t overlay overlay -o lowerdir=/,upperdir=$base/upper,workdir=$base/work $base/root
      mount -t proc proc $base/root/proc
      mount --rbind /sys $base/root/sys
      mount --rbind /dev $base/root/dev
      mount -t tmpfs tmpfs $base/root/tmp
      mount -t tmpfs tmpfs $base/root/run
      exec chroot $base/root /lib/systemd/systemd --system --unit=basic.target
    " >/dev/null 2>&1 </dev/null &
    for _ in $(seq 150); do
      # systemd is the child of the unshare whose command line names $base.
      u=$(pgrep -f "^unshare .*$base" | head -1 || true)
      p=${u:+$(pgrep -P "$u" | head -1 || true)}
      if [ -n "$p" ]; then
        s=$(timeout 5 nsenter -t "$p" -m -p -r -w systemctl is-system-running 2>/dev/null || true)
        case "$s" in running | degraded) echo "$p"; exit 0 ;; esac
      fi
      sleep 0.2
    done
    echo "systemd did not come up" >&2
    exit 1
    ;;
  run)
    p=$2
    shift 2
    exec nsenter -t "$p" -m -p -r -w "$@"
    ;;
  stop)
    kill -9 "$2" 2>/dev/null || true
    rmdir /run/victron-poller-systemd.* 2>/dev/null || true # empty outside their namespace
    ;;
  *) echo "usage: $0 start [SECONDS] | run PID CMD... | stop PID" >&2; exit 2 ;;
esac
