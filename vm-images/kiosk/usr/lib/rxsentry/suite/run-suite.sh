# The `tests` crate's integration suites in the guest (sourced by run-all,
# whose $pass, $fail and $LOGS it uses). `cargo xtask vm-image` puts the
# test binaries in bin/ and the tests to run, one `<suite> <test>` a line,
# in tests.list (xtask/src/vm/suite.rs; excluded tests and why: `excluded`).
# Each test runs alone (`--exact`, one thread) under its own time limit and
# prints `RXSENTRY-TEST <suite>::<test> PASS|FAIL <detail>`; it passes when
# it exits 0 AND libtest counted exactly one test passed (a name that
# matched nothing would "pass" with 0). After each test, and on exit,
# whatever it left behind is removed, so one failure does not cascade.
SUITE_DIR=/usr/lib/rxsentry/suite
SUITE_LIMIT=${RXSENTRY_SUITE_TEST_SECS:-150}
# Where the tests find rxsentry-sensor, -collector, -probe, rxsentry, netprobe.
export RXSENTRY_BIN_DIR=/usr/bin

# suite_cleanup: processes, network namespaces, bpffs pins and cgroups a
# (killed) test left. The guest is ours alone: everything of that kind is
# the test's.
suite_cleanup() {
	for p in rxsentry-sensor rxsentry-collector rxsentry netprobe; do
		killall -q -KILL "$p" 2>/dev/null
	done
	for ns in $(ip netns list 2>/dev/null | cut -d ' ' -f 1); do
		ip netns del "$ns" 2>/dev/null
	done
	for pin in /sys/fs/bpf/rxsentry-*; do
		[ -e "$pin" ] && rm -rf "$pin"
	done
	# Test cgroups, deepest first (only empty ones can go).
	find /sys/fs/cgroup -mindepth 1 -depth -type d 2>/dev/null |
		while read -r cg; do rmdir "$cg" 2>/dev/null; done
	rm -rf /run/rxsentry-test-* 2>/dev/null
}
trap suite_cleanup EXIT

if [ -s "$SUITE_DIR/excluded" ]; then
	sed 's/^/RXSENTRY-SUITE-EXCLUDED /' "$SUITE_DIR/excluded"
fi
while read -r suite test; do
	[ -n "$test" ] || continue
	name="$suite::$test"
	log=$LOGS/suite-$suite-$test.log
	started=$(date +%s)
	(cd /tmp && timeout -s KILL "$SUITE_LIMIT" "$SUITE_DIR/bin/$suite" \
		--exact "$test" --test-threads=1 </dev/null) >"$log" 2>&1
	status=$?
	secs=$(($(date +%s) - started))
	result=$(grep -m 1 '^test result:' "$log")
	if [ "$status" -eq 0 ] && echo "$result" | grep -q ' 1 passed;'; then
		verdict=PASS
		pass=$((pass + 1))
		detail="${secs}s"
	else
		verdict=FAIL
		fail=$((fail + 1))
		if [ "$status" -eq 137 ]; then
			detail="${secs}s: killed after ${SUITE_LIMIT}s"
		else
			# The panic's message (the line after "panicked at"), or the
			# error a test returned and its cause, else libtest's count.
			why=$(grep -m 1 -A 1 'panicked at' "$log" | tail -n 1)
			[ -n "$why" ] || why=$(grep -m 1 -A 2 '^Error: ' "$log" | grep -v '^$' | tr '\n' ' ')
			why=$(echo "$why" | cut -c 1-300)
			detail="${secs}s: exit $status: ${why:-${result:-no test result}}"
		fi
		sed "s/^/  $suite::$test| /" "$log" | tail -n 60
	fi
	echo "RXSENTRY-TEST $name $verdict $detail"
	suite_cleanup
done <"$SUITE_DIR/tests.list"
