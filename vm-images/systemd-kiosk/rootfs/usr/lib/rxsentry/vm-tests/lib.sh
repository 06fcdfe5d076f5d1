# Helpers for the systemd image's in-guest tests (sourced). A test prints
# what it saw as its LAST line (run-all shows it after PASS/FAIL) and exits
# 0 when it passed. pass, fail, wait_for, veth_peer: the initramfs image's
# helpers (vm-images/kiosk/usr/lib/rxsentry/, copied in by xtask).
. /usr/lib/rxsentry/vm-tests/kiosk-lib.sh
SENSOR_CONF=/etc/rxsentry/sensor.toml
# A program no policy allows: a copy of a trusted one is a new inode.
INTRUDER=/var/tmp/intruder

# pos_run COMMAND: runs a shell command inside pos.service (its cgroup,
# kiosk.slice/pos.service) and prints its output and `rc=STATUS`.
pos_run() {
	[ -p /run/pos/requests ] || {
		systemctl status --no-pager pos.service | tail -n 8
		journalctl -b -u rxsentry-sensor.service -u rxsentry-allowlist.service --no-pager | grep -i -E 'allow|block|trust' | tail -n 8
		fail "pos.service serves no requests (/run/pos/requests)"
	}
	echo "$1" >/run/pos/requests
	cat /run/pos/replies
}

# make_intruder: INTRUDER, a copy of /usr/bin/true outside every trusted root.
make_intruder() {
	cp /usr/bin/true "$INTRUDER" && chmod 755 "$INTRUDER" || fail "cannot create $INTRUDER"
}

# blocked_in_pos WHEN: INTRUDER, run by the POS service, fails with EPERM.
blocked_in_pos() {
	_out=$(pos_run "$INTRUDER")
	case "$_out" in
	*"not permitted"*) ;;
	*) fail "$1: the untrusted exec by pos.service was not refused with EPERM: $_out" ;;
	esac
}

# unit_prop UNIT PROPERTY: one property's value (systemctl show).
unit_prop() {
	systemctl show -P "$2" "$1"
}
