# File telemetry on this kernel: the dispensing app reads the PHI record and
# the read (path, operation, process) reaches the collector; a file outside
# the watched set read right after it produces no event; a refused open in
# the PHI tree is reported with its error. Debian's kernels allow
# trampolines, so here opens must be decided by fexit on do_filp_open (the
# host runs the syscall tracepoint programs).
. /usr/lib/rxsentry/vm-tests/lib.sh

start_services || fail "the kiosk services did not start (see above)"
hook=$(grep -o 'file open hook: .*' "$RXSENTRY_LOG/sensor.err" | head -n 1 | cut -c 1-300)
case "$hook" in
'file open hook: fexit do_filp_open'*) ;;
*) fail "opens are not decided by fexit/do_filp_open on this kernel: ${hook:-no 'file open hook' log line}" ;;
esac
tail_out=$RXSENTRY_LOG/tail-files.out
rxsentry tail --collector "$COLLECTOR_ADDR" --json --kind file >"$tail_out" 2>"$RXSENTRY_LOG/tail-files.err" &
tail_pid=$!
record='"path":"/var/lib/pharmacy/phi/patient-0001.json"'
seen=
# The subscription may not be in place yet: dispense again until one arrives.
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
	/opt/pharmacy/bin/dispense --rx RX-FILES >/dev/null || fail "dispense failed"
	cat /usr/lib/rxsentry/vm-tests/lib.sh >/dev/null
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		seen=$(grep -F -- "$record" "$tail_out" | grep -F '"operation":"read"' | head -n 1)
		[ -n "$seen" ] && break 2
		sleep 0.2
	done
done
kill "$tail_pid" 2>/dev/null
[ -n "$seen" ] || fail "no read of the PHI record reached the collector in 30s" \
	"(tail: $(tail -n 1 "$RXSENTRY_LOG/tail-files.err"))"
echo "collector saw: $seen"
case "$seen" in
*'"comm":"sed"'*) ;;
*) fail "the PHI read is not attributed to dispense's sed: $seen" ;;
esac
if grep -F "\"/usr/lib/rxsentry/vm-tests/lib.sh\"" "$tail_out"; then
	fail "a file outside the watched set was reported"
fi
# Refused inside do_filp_open (a directory opened for writing: EISDIR).
rxsentry tail --collector "$COLLECTOR_ADDR" --json --kind file >"$tail_out" 2>>"$RXSENTRY_LOG/tail-files.err" &
tail_pid=$!
refused=
for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do
	(: >/var/lib/pharmacy/phi) 2>/dev/null && fail "opening a directory for writing succeeded"
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		refused=$(grep -F '"path":"/var/lib/pharmacy/phi"' "$tail_out" | grep -F '"result":-21' | head -n 1)
		[ -n "$refused" ] && break 2
		sleep 0.2
	done
done
kill "$tail_pid" 2>/dev/null
[ -n "$refused" ] || fail "the refused open (EISDIR) of the PHI directory did not reach the collector in 30s"
echo "collector saw: $refused"
stop_services || fail "sensor did not exit 0 on SIGTERM: $(tail -n 2 "$RXSENTRY_LOG/sensor.err")"
pass "$hook: PHI read by dispense reached the collector; a refused open too (EISDIR); nothing outside the watched set"
