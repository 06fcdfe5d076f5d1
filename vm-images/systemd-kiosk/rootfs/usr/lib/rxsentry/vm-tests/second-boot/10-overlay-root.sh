# The second boot of the same disk, as overlayroot does it: the disk
# read-only below, a tmpfs above; the packaged units still start the sensor
# (upgraded in the first boot) with the BPF-LSM backend.
. /usr/lib/rxsentry/vm-tests/lib.sh

root=$(awk '$2 == "/" { print $3 }' /proc/mounts | tail -n 1)
[ "$root" = overlay ] || fail "/ is $root, not an overlay"
awk '$2 == "/media/root-ro" { print $3, $4 }' /proc/mounts | grep -q '^ext4 ro' ||
	fail "the disk is not mounted read-only below: $(grep root-ro /proc/mounts)"
touch /media/root-ro/rxsentry-write-test 2>/dev/null && fail "the lower disk is writable"
for unit in rxsentry-isolation.service rxsentry-allowlist.service rxsentry-sensor.service; do
	state=$(systemctl is-active "$unit")
	[ "$state" = active ] || fail "$unit is $state: $(journalctl -b -u "$unit" --no-pager | tail -n 5)"
done
backend=$(journalctl -b -u rxsentry-sensor.service --no-pager | grep -o 'exec allowlist backend: [a-z+]*' | head -n 1)
[ "$backend" = "exec allowlist backend: lsm" ] || fail "sensor picked '${backend:-nothing}'"
pass "/ is an overlay over the read-only disk; isolation, allowlist and sensor units active, backend lsm, package $(dpkg-query -W -f '${Version}' rxsentry-sensor)"
