# The kiosk's rxsentry services, as shell functions (source this file): the
# collector on 127.0.0.1 (standing in for the SOC) and the sensor streaming
# to it. They run as children of the sourcing shell, so `stop_services` can
# wait for them and see their exit status. Logs go to $RXSENTRY_LOG.
RXSENTRY_LOG=/var/log/rxsentry
COLLECTOR_ADDR=127.0.0.1:50051
COLLECTOR_STATE=/tmp/rxsentry-collector
# Read by `rxsentry` (tail) in the tests.
export RXSENTRY_TOKEN_FILE=/tmp/rxsentry-vm.token
READY_SECS=${RXSENTRY_READY_SECS:-90}

# wait_for FILE TEXT SECONDS: succeeds once TEXT appears in FILE.
wait_for() {
	_n=$(($3 * 5))
	while [ "$_n" -gt 0 ]; do
		grep -qF -- "$2" "$1" 2>/dev/null && return 0
		sleep 0.2
		_n=$((_n - 1))
	done
	return 1
}

# start_services: starts both and waits until they are ready; on failure
# prints why and returns 1.
start_services() {
	mkdir -p "$RXSENTRY_LOG"
	: >"$RXSENTRY_LOG/collector.out"
	# The guest's collector is on loopback: plaintext there (no CA in the
	# image), with a viewer token for the tests' `rxsentry tail`.
	if [ ! -s "$RXSENTRY_TOKEN_FILE" ]; then
		mkdir -p "$COLLECTOR_STATE"
		rxsentry-collector --state-dir "$COLLECTOR_STATE" pki add-operator \
			--name vm-tests --role viewer --token-out "$RXSENTRY_TOKEN_FILE" >/dev/null || return 1
	fi
	rxsentry-collector --listen "$COLLECTOR_ADDR" --stats-interval 0 \
		--insecure-plaintext --state-dir "$COLLECTOR_STATE" \
		>"$RXSENTRY_LOG/collector.out" 2>"$RXSENTRY_LOG/collector.err" &
	COLLECTOR_PID=$!
	if ! wait_for "$RXSENTRY_LOG/collector.out" "listening on" "$READY_SECS"; then
		echo "collector not listening within ${READY_SECS}s: $(tail -n 3 "$RXSENTRY_LOG/collector.err")"
		return 1
	fi
	# Emptied here, not only by the background job's redirection: that may
	# run after wait_for's first look, which would then find the previous
	# test's "ready" line.
	: >"$RXSENTRY_LOG/sensor.out"
	: >"$RXSENTRY_LOG/sensor.err"
	rxsentry-sensor --config "${SENSOR_CONFIG:-/etc/rxsentry/sensor.toml}" \
		>"$RXSENTRY_LOG/sensor.out" 2>"$RXSENTRY_LOG/sensor.err" &
	SENSOR_PID=$!
	if ! wait_for "$RXSENTRY_LOG/sensor.out" "rxsentry-sensor ready" "$READY_SECS"; then
		# The error line names the program; a verifier log follows it.
		echo "sensor not ready within ${READY_SECS}s: $(grep -m 1 'rxsentry-sensor:' "$RXSENTRY_LOG/sensor.err" | cut -c 1-400)"
		echo "... $(tail -n 12 "$RXSENTRY_LOG/sensor.err")"
		return 1
	fi
}

# stop_services: SIGTERM to the sensor (it detaches and flushes), then to the
# collector. Returns the sensor's exit status.
stop_services() {
	_status=1
	if [ -n "$SENSOR_PID" ]; then
		kill -TERM "$SENSOR_PID" 2>/dev/null
		wait "$SENSOR_PID"
		_status=$?
	fi
	if [ -n "$COLLECTOR_PID" ]; then
		kill -TERM "$COLLECTOR_PID" 2>/dev/null
		wait "$COLLECTOR_PID"
	fi
	SENSOR_PID= COLLECTOR_PID=
	return $_status
}
