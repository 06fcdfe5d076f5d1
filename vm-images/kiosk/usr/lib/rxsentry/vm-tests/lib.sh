# Helpers for the in-guest tests (sourced). A test prints what it saw as its
# LAST line (run-all shows it after PASS/FAIL) and exits 0 when it passed.
. /usr/lib/rxsentry/kiosk-services.sh

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
