# The kernel filesystems the sensor relies on are mounted, and loopback is up.
. /usr/lib/rxsentry/vm-tests/lib.sh

missing=
for fs in proc:/proc sysfs:/sys devtmpfs:/dev bpf:/sys/fs/bpf \
	tracefs:/sys/kernel/tracing securityfs:/sys/kernel/security cgroup2:/sys/fs/cgroup; do
	type=${fs%%:*}
	point=${fs#*:}
	awk -v t="$type" -v p="$point" '$2 == p && $3 == t { found = 1 } END { exit !found }' \
		/proc/mounts || missing="$missing $type@$point"
done
[ -z "$missing" ] || fail "not mounted:$missing"
ip link show lo | grep -q '[<,]UP[,>]' || fail "loopback is down: $(ip link show lo)"
pass "proc sysfs devtmpfs bpf tracefs securityfs cgroup2 mounted; lo up"
