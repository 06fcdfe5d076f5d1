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
