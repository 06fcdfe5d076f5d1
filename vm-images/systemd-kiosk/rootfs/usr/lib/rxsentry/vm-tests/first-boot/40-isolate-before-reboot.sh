# Isolates the kiosk (the state goes to /var/lib/rxsentry on the disk); the
# second boot checks it is restored before the network comes up.
. /usr/lib/rxsentry/vm-tests/lib.sh

out=$(rxsentry-sensor --config "$SENSOR_CONF" isolate --reason "vm-test: isolated before reboot" 2>&1) ||
	fail "isolate failed: $out"
status=$(rxsentry-sensor --config "$SENSOR_CONF" isolation status 2>&1)
echo "$status"
echo "$status" | grep -q "isolated: yes" || fail "status does not say isolated: $status"
[ -s /var/lib/rxsentry/isolation.toml ] || fail "no isolation state file on the disk"
sync
pass "isolated; state on the disk: $(tr '\n' ' ' </var/lib/rxsentry/isolation.toml | cut -c 1-120)"
