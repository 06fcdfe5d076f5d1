# `dpkg -i` of the same package with a bumped version: the POS service's
# untrusted exec stays refused during the upgrade (tried in a loop while
# dpkg runs) and after it, on the new sensor, which adopted the pins.
. /usr/lib/rxsentry/vm-tests/lib.sh

deb=$(ls /var/cache/rxsentry-vmtest/rxsentry-sensor_*.deb) || fail "no upgrade package in the image"
old=$(dpkg-query -W -f '${Version}' rxsentry-sensor)
old_pid=$(unit_prop rxsentry-sensor.service MainPID)
make_intruder
dpkg --force-confold -i "$deb" >/var/log/rxsentry-tests/dpkg-upgrade.log 2>&1 &
dpkg_pid=$!
tries=0
while kill -0 "$dpkg_pid" 2>/dev/null; do
	blocked_in_pos "during the upgrade (try $((tries + 1)))"
	tries=$((tries + 1))
done
wait "$dpkg_pid" || fail "dpkg -i failed: $(tail -n 5 /var/log/rxsentry-tests/dpkg-upgrade.log)"
[ "$tries" -ge 1 ] || fail "the upgrade ended before one exec was tried"
new=$(dpkg-query -W -f '${Version}' rxsentry-sensor)
[ "$new" != "$old" ] || fail "version still $old after the upgrade"
[ "$(systemctl is-active rxsentry-sensor.service)" = active ] || fail "sensor not active after the upgrade"
new_pid=$(unit_prop rxsentry-sensor.service MainPID)
[ "$new_pid" != "$old_pid" ] || fail "the sensor was not restarted by the upgrade (pid $old_pid)"
blocked_in_pos "after the upgrade"
journalctl -b -u rxsentry-sensor.service --no-pager | grep -q "adopted the pinned policy" ||
	fail "the upgraded sensor did not adopt the pinned policy"
pass "upgrade $old -> $new: sensor restarted (pid $old_pid -> $new_pid), $tries untrusted execs during dpkg -i all refused, refused after"
