# `dpkg -r` then `dpkg -P` of the sensor package (on the overlay root, so
# the disk keeps it for the next run): removal stops the sensor and takes
# everything of it out of the kernel (the allowlist's and isolation's pins:
# the untrusted exec runs again) but keeps its state; purge removes the
# state and the conffile.
. /usr/lib/rxsentry/vm-tests/lib.sh

make_intruder
blocked_in_pos "before the removal"
[ -d /sys/fs/bpf/rxsentry/isolation ] || fail "no isolation pins before the removal (isolated at boot?)"
dpkg -r rxsentry-sensor >/var/log/rxsentry-tests/dpkg-remove.log 2>&1 ||
	fail "dpkg -r failed: $(tail -n 5 /var/log/rxsentry-tests/dpkg-remove.log)"
state=$(systemctl is-active rxsentry-sensor.service)
[ "$state" != active ] || fail "the sensor is still active after the removal"
left=$(find /sys/fs/bpf/rxsentry -type f 2>/dev/null)
[ -z "$left" ] || fail "pins left in the kernel after the removal: $left"
out=$(pos_run "$INTRUDER")
case "$out" in
*rc=0*) ;;
*) fail "the untrusted exec is still refused after the removal: $out" ;;
esac
[ -s /var/lib/rxsentry/isolation.toml ] || fail "the removal deleted the isolation state (only purge may)"
dpkg -P rxsentry-sensor >/var/log/rxsentry-tests/dpkg-purge.log 2>&1 ||
	fail "dpkg -P failed: $(tail -n 5 /var/log/rxsentry-tests/dpkg-purge.log)"
[ -e /var/lib/rxsentry ] && fail "/var/lib/rxsentry left after the purge: $(ls -A /var/lib/rxsentry)"
[ -e /etc/rxsentry/sensor.toml ] && fail "the conffile /etc/rxsentry/sensor.toml left after the purge"
dpkg-query -W -f '${Status}' rxsentry-sensor 2>/dev/null | grep -q installed && fail "still installed"
pass "removed: sensor $state, no pin left, the untrusted exec runs again, isolation state kept; purged: /var/lib/rxsentry and the conffile gone"
