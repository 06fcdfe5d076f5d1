# The first boot isolated the kiosk: at this boot the isolation was in
# force before network-pre.target (recorded then by
# rxsentry-vmtest-early.service), and a network interface that appears now
# is cut off (a veth peer in another namespace: TCP and UDP dropped).
. /usr/lib/rxsentry/vm-tests/lib.sh

early=$(cat /run/rxsentry-vmtest/early-isolation 2>&1)
echo "before the network: $early"
echo "$early" | grep -q "isolated: yes" || fail "not isolated before the network: $early"
iso=$(unit_prop rxsentry-isolation.service ActiveEnterTimestampMonotonic)
rec=$(unit_prop rxsentry-vmtest-early.service ActiveEnterTimestampMonotonic)
net=$(unit_prop network-pre.target ActiveEnterTimestampMonotonic)
[ "$iso" -gt 0 ] && [ "$rec" -ge "$iso" ] && [ "$net" -ge "$rec" ] ||
	fail "order: isolation ${iso}us, record ${rec}us, network-pre ${net}us"

modprobe veth || fail "cannot load veth"
veth_peer
trap 'kill $NETPROBE_PID 2>/dev/null; ip netns del other 2>/dev/null' EXIT
# The sensor attaches to a new interface at its next poll (500 ms): wait
# until TCP is cut, 20 s at most, then it must stay cut.
n=0
while netprobe tcp 10.99.0.2 7100 500 2>/dev/null; do
	n=$((n + 1))
	[ "$n" -lt 40 ] || fail "TCP to the veth peer still flows after 20 s: $(journalctl -b -u rxsentry-sensor.service --no-pager | grep -i isolat | tail -n 5)"
done
netprobe tcp 10.99.0.2 7100 1000 && fail "TCP flows again while isolated: $(journalctl -b -u rxsentry-sensor.service --no-pager | grep -i -E 'isolat|rxv0' | tail -n 5)"
netprobe udp 10.99.0.2 7100 1000 && fail "UDP flows while isolated"
dropped=$(rxsentry-sensor --config "$SENSOR_CONF" isolation status | sed -n 's/^dropped_packets: //p')
[ "${dropped:-0}" -gt 0 ] || fail "no packet counted as dropped"
pass "isolated before network-pre.target (isolation $((iso / 1000)) ms, network-pre $((net / 1000)) ms); a new veth peer cut off (TCP, UDP; $dropped packets dropped)"
