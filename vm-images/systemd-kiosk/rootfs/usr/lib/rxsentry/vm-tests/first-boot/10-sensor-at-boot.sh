# The packaged units started the sensor at boot, with the BPF-LSM backend,
# before the kiosk apps; `systemctl status` and `rxsentry-sensor status`
# say so.
. /usr/lib/rxsentry/vm-tests/lib.sh

for unit in rxsentry-allowlist.service rxsentry-sensor.service; do
	state=$(systemctl is-active "$unit")
	if [ "$state" != active ]; then
		# The daemon's own lines (not systemd's): why it did not start.
		journalctl -b -u "$unit" --no-pager | grep -v ' systemd\[1\]: ' | tail -n 15
		fail "$unit is $state: $(journalctl -b -u "$unit" --no-pager | grep -v ' systemd\[1\]: ' | tail -n 1)"
	fi
done
systemctl status --no-pager rxsentry-sensor.service
status=$(rxsentry-sensor --config "$SENSOR_CONF" status 2>&1) ||
	fail "rxsentry-sensor status failed: $status"
echo "$status"
backend=$(journalctl -b -u rxsentry-sensor.service --no-pager | grep -o 'exec allowlist backend: [a-z+]*' | head -n 1)
[ "$backend" = "exec allowlist backend: lsm" ] ||
	fail "sensor picked '${backend:-nothing}' on a kernel with BPF-LSM"
echo "$status" | grep -qi 'lsm' || fail "rxsentry-sensor status does not name the lsm backend"
# Ordered before the apps: the sensor was ready before pos.service started.
sensor_ready=$(unit_prop rxsentry-sensor.service ActiveEnterTimestampMonotonic)
pos_start=$(unit_prop pos.service ExecMainStartTimestampMonotonic)
[ "$sensor_ready" -gt 0 ] && [ "$sensor_ready" -le "$pos_start" ] ||
	fail "pos.service started at ${pos_start}us, before the sensor was ready (${sensor_ready}us)"
allow=$(rxsentry-sensor --config "$SENSOR_CONF" allowlist status 2>&1)
echo "$allow" | grep -q "enforcing: yes" || fail "allowlist status: $allow"
pass "rxsentry-allowlist and rxsentry-sensor active at boot, backend lsm, sensor ready at $((sensor_ready / 1000)) ms, pos.service started at $((pos_start / 1000)) ms"
