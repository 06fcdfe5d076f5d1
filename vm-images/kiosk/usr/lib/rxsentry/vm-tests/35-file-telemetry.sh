# File telemetry on this kernel, with each open hook in turn:
# - as shipped: Debian's kernels run BPF-LSM and allow trampolines, so
#   successful opens are reported by BPF-LSM file_open and refused ones by
#   fexit on do_filp_open (the host can run neither);
# - with `kernel.fexit_file_opens = false` and `lsm_file_opens = false`:
#   the syscall exit tracepoint programs (helper reads on 6.1), as on
#   kernels without trampolines or BPF-LSM.
# Each time: the dispensing app's read of the PHI record reaches the
# collector (path, operation, process); a file outside the watched set read
# right after it produces no event; a creating open in the PHI tree is
# reported with the mode asked for, and an open refused there with its error.
. /usr/lib/rxsentry/vm-tests/lib.sh

tail_out=$RXSENTRY_LOG/tail-files.out

# Starts a subscriber writing to $tail_out (pid in $tail_pid).
subscribe() {
	rxsentry tail --insecure-plaintext --collector "$COLLECTOR_ADDR" --json --kind file >"$tail_out" 2>>"$RXSENTRY_LOG/tail-files.err" &
	tail_pid=$!
}

# The acts and checks of `act_until` below (they read $tail_out, $record
# and $created, and set $seen, $write and $refused).
dispense_and_read_outside() {
	/opt/pharmacy/bin/dispense --rx RX-FILES >/dev/null || fail "dispense failed"
	cat /usr/lib/rxsentry/vm-tests/lib.sh >/dev/null
}
read_seen() {
	seen=$(grep -F -- "$record" "$tail_out" | grep -F '"operation":"read"' | head -n 1)
	[ -n "$seen" ]
}
create_and_refuse() {
	: >"$created" || fail "cannot create $created"
	(: >/var/lib/pharmacy/phi) 2>/dev/null && fail "opening a directory for writing succeeded"
}
create_and_refusal_seen() {
	write=$(grep -F "\"path\":\"$created\"" "$tail_out" | grep -F '"operation":"write"' | head -n 1)
	refused=$(grep -F '"path":"/var/lib/pharmacy/phi"' "$tail_out" | grep -F '"result":-21' | head -n 1)
	[ -n "$write" ] && [ -n "$refused" ]
}

# check_hook <expected start of the 'file open hook' log line> <fd result>:
# runs the checks against the started services; prints what it saw.
check_hook() {
	hook=$(grep -o 'file open hook: .*' "$RXSENTRY_LOG/sensor.err" | head -n 1 | cut -c 1-300)
	case "$hook" in
	"$1"*) ;;
	*) fail "expected '$1', got: ${hook:-no 'file open hook' log line}" ;;
	esac
	subscribe
	record='"path":"/var/lib/pharmacy/phi/patient-0001.json"'
	seen=
	act_until dispense_and_read_outside read_seen
	kill "$tail_pid" 2>/dev/null
	[ -n "$seen" ] || fail "$hook: no read of the PHI record reached the collector in 30s" \
		"(tail: $(tail -n 1 "$RXSENTRY_LOG/tail-files.err"))"
	echo "collector saw: $seen"
	case "$seen" in
	*'"comm":"sed"'*) ;;
	*) fail "$hook: the PHI read is not attributed to dispense's sed: $seen" ;;
	esac
	if grep -F "\"/usr/lib/rxsentry/vm-tests/lib.sh\"" "$tail_out"; then
		fail "$hook: a file outside the watched set was reported"
	fi
	# A creating open (mode 0666 = 438 asked for) and an open refused in
	# the kernel (a directory opened for writing: EISDIR).
	created=/var/lib/pharmacy/phi/vm-created-$$
	subscribe
	write= refused=
	act_until create_and_refuse create_and_refusal_seen
	kill "$tail_pid" 2>/dev/null
	rm -f "$created"
	[ -n "$write" ] || fail "$hook: the creating open of $created did not reach the collector in 30s"
	echo "collector saw: $write"
	case "$write" in
	*'"mode":438'*) ;;
	*) fail "$hook: the creating open is not reported with mode 0666: $write" ;;
	esac
	case "$2" in
	0) case "$write" in *'"result":0'*) ;; *) fail "$hook: a create decided before its fd exists must report result 0: $write" ;; esac ;;
	fd) case "$write" in *'"result":0'* | *'"result":-'*) fail "$hook: the create must report its fd: $write" ;; esac ;;
	esac
	[ -n "$refused" ] || fail "$hook: the refused open (EISDIR) of the PHI directory did not reach the collector in 30s"
	echo "collector saw: $refused"
	stop_services || fail "$hook: sensor did not exit 0 on SIGTERM: $(tail -n 2 "$RXSENTRY_LOG/sensor.err")"
}

start_services || fail "the kiosk services did not start (see above)"
check_hook 'file open hook: fexit do_filp_open' 0
beyond=$(grep -o 'beyond the syscall hooks: .*' "$RXSENTRY_LOG/sensor.err" | head -n 1 | cut -c 1-300)
case "$beyond" in
*'opens: every open that reaches a file (BPF-LSM file_open'*) ;;
*) fail "BPF-LSM file_open does not report the opens: ${beyond:-no 'beyond the syscall hooks' log line}" ;;
esac

tracepoints=/tmp/sensor-tracepoint-opens.toml
sed 's/^\[kernel\]$/[kernel]\nfexit_file_opens = false\nlsm_file_opens = false/' /etc/rxsentry/sensor.toml >"$tracepoints"
grep -q '^lsm_file_opens = false$' "$tracepoints" || fail "no [kernel] table in /etc/rxsentry/sensor.toml to turn fexit and BPF-LSM opens off in"
SENSOR_CONFIG=$tracepoints start_services || fail "the kiosk services did not start with fexit and BPF-LSM opens off (see above)"
check_hook 'file open hook: syscall exit tracepoints (fexit unavailable: off in the config' fd

pass "BPF-LSM file_open with fexit do_filp_open, then the syscall exit tracepoints: PHI read by dispense reached the collector; a create (mode 0666) and a refused open (EISDIR) too; nothing outside the watched set"
