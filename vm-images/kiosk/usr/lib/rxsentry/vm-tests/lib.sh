# Helpers for the in-guest tests (sourced). A test prints what it saw as its
# LAST line (run-all shows it after PASS/FAIL) and exits 0 when it passed.
. /usr/lib/rxsentry/kiosk-services.sh

# Services a test started end with it, passed or failed: the next test
# starts its own on the same ports and directories.
trap 'stop_services >/dev/null 2>&1' EXIT

pass() {
	echo "$*"
	exit 0
}

fail() {
	echo "$*"
	exit 1
}

# act_until ACT CHECK (function names): a new `rxsentry tail` subscription
# may miss the first events, so run ACT, give CHECK 2 s (every 0.2 s) to
# see its event, and run ACT again, 15 times at most (30 s). Succeeds once
# CHECK does.
act_until() {
	for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
		"$1"
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			"$2" && return 0
			sleep 0.2
		done
	done
	return 1
}

# veth_peer: a network namespace "other" behind a veth pair (rxv0
# 10.99.0.1 here, rxv1 10.99.0.2 there) with `netprobe serve` on
# 10.99.0.2:7100 (pid in NETPROBE_PID), listening when this returns.
veth_peer() {
	_ip=/usr/sbin/ip
	$_ip netns add other || fail "ip netns add failed"
	$_ip link add rxv0 type veth peer name rxv1 || fail "veth pair not created"
	$_ip link set rxv1 netns other || fail "veth end not moved"
	$_ip addr add 10.99.0.1/24 dev rxv0 && $_ip link set rxv0 up || fail "rxv0 not up"
	$_ip -n other addr add 10.99.0.2/24 dev rxv1 && $_ip -n other link set rxv1 up &&
		$_ip -n other link set lo up || fail "rxv1 not up"
	: >/tmp/netprobe.out
	$_ip netns exec other netprobe serve 10.99.0.2 7100 >/tmp/netprobe.out 2>&1 &
	NETPROBE_PID=$!
	wait_for /tmp/netprobe.out ready 10 || fail "netprobe serve not ready: $(cat /tmp/netprobe.out)"
}
