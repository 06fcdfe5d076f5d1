# The packaged sensor (default config: self_protection.deny_writes) refuses
# root a change to its config and its binary while it runs, and reports it.
. /usr/lib/rxsentry/vm-tests/lib.sh

journalctl -b -u rxsentry-sensor.service --no-pager | grep -q 'write guard: BPF-LSM refuses' ||
	fail "no write guard: $(journalctl -b -u rxsentry-sensor.service --no-pager | grep 'write guard' | tail -n 1)"
before=$(sha256sum "$SENSOR_CONF")
if echo "# edited" 2>/dev/null >>"$SENSOR_CONF"; then
	fail "root appended to $SENSOR_CONF while the sensor runs"
fi
# On the same file system, so mv is one rename(2) over the binary.
cp /bin/true /usr/sbin/.rxsentry-impostor || fail "cannot create the impostor"
if mv -f /usr/sbin/.rxsentry-impostor /usr/sbin/rxsentry-sensor 2>/dev/null; then
	fail "root replaced /usr/sbin/rxsentry-sensor by rename while the sensor runs"
fi
rm -f /usr/sbin/.rxsentry-impostor
[ "$(sha256sum "$SENSOR_CONF")" = "$before" ] || fail "$SENSOR_CONF changed"
journalctl -b -u rxsentry-sensor.service --no-pager | grep 'tamper:' | grep -q 'refused (BPF-LSM)' ||
	fail "the refusals were not reported: $(journalctl -b -u rxsentry-sensor.service --no-pager | grep 'tamper:' | tail -n 2)"
pass "root's append to the config and rename over the binary refused (EPERM) and reported while the sensor runs"
