# The sensor runs on this kernel (offsets from ITS BTF, raw tracepoints) and
# an exec of a marked command travels sensor -> collector on 127.0.0.1 ->
# `rxsentry tail`; the sensor then stops cleanly on SIGTERM.
. /usr/lib/rxsentry/vm-tests/lib.sh

start_services || fail "the kiosk services did not start (see above)"
tail_out=$RXSENTRY_LOG/tail.out
rxsentry tail --insecure-plaintext --collector "$COLLECTOR_ADDR" --json --kind exec >"$tail_out" 2>"$RXSENTRY_LOG/tail.err" &
tail_pid=$!
marker="RX-$(cut -c1-8 /proc/sys/kernel/random/uuid)"
# The exec event of dispense itself: its filename field (JSON, unescaped
# quotes) plus the marker in its argv. Our own greps carry the marker in
# their argv too, but never that filename field.
dispense_exec='"filename":"/opt/pharmacy/bin/dispense"'
seen=
dispense() { /opt/pharmacy/bin/dispense --rx "$marker" >/dev/null || fail "dispense --rx $marker failed"; }
exec_seen() {
	seen=$(grep -F -- "$dispense_exec" "$tail_out" | grep -F -- "$marker" | head -n 1)
	[ -n "$seen" ]
}
act_until dispense exec_seen
kill "$tail_pid" 2>/dev/null
[ -n "$seen" ] || fail "no exec of dispense --rx $marker reached the collector in 30s" \
	"(tail: $(tail -n 1 "$RXSENTRY_LOG/tail.err"))"
echo "collector saw: $seen"
case "$seen" in
*'"kind":"exec"'*) ;;
*) fail "the marked event is not an exec: $seen" ;;
esac
stop_services || fail "sensor did not exit 0 on SIGTERM: $(tail -n 2 "$RXSENTRY_LOG/sensor.err")"
pass "exec of dispense --rx $marker reached the collector at $COLLECTOR_ADDR; sensor stopped cleanly"
