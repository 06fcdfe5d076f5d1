# The allowlist scoped to kiosk.slice: the apps (services in the slice) ran
# under it, an untrusted exec by the POS service (kiosk.slice/pos.service,
# a child cgroup of the scope) fails with EPERM, and the same file runs
# outside the slice.
. /usr/lib/rxsentry/vm-tests/lib.sh

for unit in pos.service dispense.service; do
	[ "$(systemctl is-active "$unit")" = active ] ||
		fail "$unit is not active: $(journalctl -b -u "$unit" --no-pager | tail -n 5)"
	[ "$(unit_prop "$unit" Slice)" = kiosk.slice ] || fail "$unit is not in kiosk.slice"
done
grep -q "dispensed RX-BOOT" /var/lib/pharmacy/dispense.log || fail "dispense.service did not dispense at boot"
cgroup=$(cat "/proc/$(unit_prop pos.service MainPID)/cgroup")
[ "$cgroup" = "0::/kiosk.slice/pos.service" ] || fail "pos.service runs in $cgroup"
sale=$(pos_run "/opt/pos/bin/pos-app --sale 4.20")
case "$sale" in
*"sale of 4.20 recorded"*rc=0) ;;
*) fail "the POS app did not run in its service: $sale" ;;
esac
make_intruder
blocked_in_pos "in kiosk.slice/pos.service"
# A sub-cgroup made by the service stays in scope.
sub=$(pos_run "mkdir -p /sys/fs/cgroup/kiosk.slice/pos.service/plugin 2>&1; echo \$\$ >/sys/fs/cgroup/kiosk.slice/pos.service/plugin/cgroup.procs 2>&1; cat /proc/self/cgroup; $INTRUDER")
echo "sub-cgroup: $sub"
case "$sub" in
*"0::/kiosk.slice/pos.service/plugin"*"not permitted"*) ;;
*) fail "the untrusted exec in a sub-cgroup of pos.service was not refused: $sub" ;;
esac
# Outside the scope (this test runs in system.slice) it runs.
"$INTRUDER" || fail "$INTRUDER does not run outside kiosk.slice"
journalctl -b -u rxsentry-sensor.service --no-pager | grep -i 'block' | tail -n 3
pass "pos-app ran in kiosk.slice/pos.service, dispense ran at boot, $INTRUDER refused with EPERM there and ran in system.slice"
