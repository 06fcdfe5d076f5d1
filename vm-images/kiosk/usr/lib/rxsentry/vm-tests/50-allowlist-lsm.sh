# Exec allowlisting with backend A (BPF-LSM): on this kernel the sensor must
# pick `lsm`, and an exec of a file outside the allowlist must FAIL with
# EPERM ("Operation not permitted": the caller keeps running) rather than be
# killed (exit 137, backend B). The policy is scoped to a test cgroup so the
# rest of the guest is not under it. Then the same exec with the sensor
# stopped (SIGTERM) and killed (SIGKILL): the pinned LSM link still refuses
# it, until `allowlist detach`. Never skipped.
. /usr/lib/rxsentry/vm-tests/lib.sh

# Whatever happens, no pinned verdict program outlives this test.
trap 'stop_services >/dev/null 2>&1; rxsentry-sensor --config /tmp/sensor-policy.toml allowlist detach >/dev/null 2>&1' EXIT

scope=/sys/fs/cgroup/allowlist-test
mkdir -p "$scope" || fail "cannot create cgroup $scope"
sha=$(sha256sum /bin/busybox | cut -d' ' -f1)
cp /bin/busybox /tmp/intruder || fail "cannot copy busybox"
cat >/tmp/policy.toml <<POLICY
mode = "enforce"
scope_cgroups = ["$scope"]
[[allow]]
path = "/bin/busybox"
sha256 = "$sha"
POLICY
cat /etc/rxsentry/sensor.toml >/tmp/sensor-policy.toml
printf '\n[policy]\npath = "/tmp/policy.toml"\n' >>/tmp/sensor-policy.toml
SENSOR_CONFIG=/tmp/sensor-policy.toml start_services || fail "services did not start (see above)"

backend=$(grep -o 'exec allowlist backend: [a-z+]*' "$RXSENTRY_LOG/sensor.err" | head -n 1)
[ "$backend" = "exec allowlist backend: lsm" ] ||
	fail "sensor picked '${backend:-nothing}' on a kernel with BPF-LSM: $(tail -n 3 "$RXSENTRY_LOG/sensor.err")"

tail_out=$RXSENTRY_LOG/policy.out
rxsentry tail --insecure-plaintext --collector "$COLLECTOR_ADDR" --json --kind policy >"$tail_out" 2>"$RXSENTRY_LOG/policy.err" &
tail_pid=$!

# Inside the scoped cgroup: busybox (allowlisted) runs, the copy does not.
# Repeat until the block event reached the subscriber (it may connect late).
for _ in 1 2 3 4 5 6 7 8 9 10; do
	out=$(sh -c "echo \$\$ >$scope/cgroup.procs && /bin/busybox true && echo allowed-ok; /tmp/intruder true; echo rc=\$?" 2>&1)
	grep -q '"backend":"lsm"' "$tail_out" && break
	sleep 1
done
kill "$tail_pid" 2>/dev/null
echo "in the cgroup: $out"
echo "block event: $(head -n 1 "$tail_out")"
grep '"action":"blocked"' "$tail_out" | grep -q '"backend":"lsm"' ||
	fail "no blocked policy event with backend lsm reached the collector: $(head -n 1 "$tail_out")"
case "$out" in
*allowed-ok*) ;;
*) fail "the allowlisted busybox did not run: $out" ;;
esac
case "$out" in
*rc=137*) fail "the intruder was killed (backend B), not refused with EPERM: $out" ;;
*rc=0*) fail "the intruder ran: $out" ;;
esac
case "$out" in
*"not permitted"*) ;;
*) fail "the exec did not fail with EPERM: $out" ;;
esac
# A shell that makes a sub-cgroup of the scope and moves in is still under
# the policy (the scope is a subtree).
sub_out=$(sh -c "mkdir -p $scope/escape/deeper && echo \$\$ >$scope/escape/deeper/cgroup.procs && /tmp/intruder true; echo rc=\$?" 2>&1)
echo "in a sub-cgroup: $sub_out"
case "$sub_out" in
*"not permitted"*) ;;
*) fail "the exec in a sub-cgroup of the scope was not refused with EPERM: $sub_out" ;;
esac
stop_services || fail "sensor did not exit 0 on SIGTERM: $(tail -n 2 "$RXSENTRY_LOG/sensor.err")"

# in_scope: busybox and the copy run in the scope; what they printed.
in_scope() {
	sh -c "echo \$\$ >$scope/cgroup.procs && /bin/busybox true && echo allowed-ok; /tmp/intruder true; echo rc=\$?" 2>&1
}
# refused WHEN: the copy is refused with EPERM and busybox runs.
refused() {
	_out=$(in_scope)
	case "$_out" in
	*allowed-ok*"not permitted"*) ;;
	*) fail "$1: the copy was not refused with EPERM (or busybox did not run): $_out" ;;
	esac
}
refused "after SIGTERM of the sensor"
SENSOR_CONFIG=/tmp/sensor-policy.toml start_services || fail "services did not restart (see above)"
grep -q "adopted the pinned policy" "$RXSENTRY_LOG/sensor.err" ||
	fail "the restarted sensor did not adopt the pinned policy: $(tail -n 3 "$RXSENTRY_LOG/sensor.err")"
kill -KILL "$SENSOR_PID"
wait "$SENSOR_PID"
SENSOR_PID=
refused "after SIGKILL of the sensor"
status=$(rxsentry-sensor --config /tmp/sensor-policy.toml allowlist status 2>&1)
echo "$status" | grep -q "enforcing: yes" || fail "allowlist status after SIGKILL: $status"
rxsentry-sensor --config /tmp/sensor-policy.toml allowlist detach >/dev/null 2>&1 || fail "allowlist detach failed"
# The copy runs now: busybox under another name says "applet not found".
detached=$(in_scope)
case "$detached" in
*"not permitted"* | *rc=126*) fail "after allowlist detach the copy still does not run: $detached" ;;
*"applet not found"*) ;;
*) fail "after allowlist detach: unexpected output: $detached" ;;
esac
stop_services
rmdir "$scope/escape/deeper" "$scope/escape" "$scope" 2>/dev/null
pass "backend lsm: exec of a non-allowlisted copy failed with EPERM (in the scope and two levels below it, and with the sensor stopped, restarted and killed), busybox ran, block event (backend lsm) reached the collector; allowlist detach lifted it"
