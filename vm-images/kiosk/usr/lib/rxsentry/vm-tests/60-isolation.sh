# Network isolation on this kernel (TC filters through netlink before 6.6,
# TCX links after): the guest's own network namespace is cut off from a
# namespace this test creates (veth pair), TCP and UDP both ways, and
# released again; loopback (the collector) is never cut.
. /usr/lib/rxsentry/vm-tests/lib.sh

IP=/usr/sbin/ip
conf=/tmp/isolation-test.toml
cat >"$conf" <<CONF
[host]
id = "kiosk-vm"
[collector]
endpoint = "http://127.0.0.1:50051"
insecure_plaintext = true
[isolation]
enabled = true
pin_dir = "/sys/fs/bpf/rxsentry-vm-isolation"
state_dir = "/tmp/rxsentry-vm-isolation"
CONF
sensor() { rxsentry-sensor --config "$conf" "$@"; }

# Debian builds these as modules; the image carries them (xtask vm image).
for m in drivers/net/veth drivers/net/tun net/sched/sch_ingress net/sched/cls_bpf; do
	name=${m##*/}
	grep -q "^$name " /proc/modules ||
		insmod "/lib/modules/$(uname -r)/kernel/$m.ko" ||
		fail "cannot load kernel module $name"
done

veth_peer
server=$NETPROBE_PID

reach() { netprobe tcp 10.99.0.2 7100 1500 && netprobe udp 10.99.0.2 7100 1500; }
reach || fail "the other namespace is not reachable before isolation"

out=$(sensor isolate --reason "vm-test: isolation on $(uname -r)" 2>&1) ||
	fail "isolate failed: $out"
status=$(sensor isolation status 2>&1) || fail "isolation status failed: $status"
echo "$status"
case "$status" in
*"isolated: yes"*) ;;
*) fail "status does not say isolated: $status" ;;
esac
netprobe tcp 10.99.0.2 7100 1000 && fail "TCP still flows while isolated"
netprobe udp 10.99.0.2 7100 1000 && fail "UDP still flows while isolated"
dropped=$(sensor isolation status | sed -n 's/^dropped_packets: //p')
[ "${dropped:-0}" -gt 0 ] || fail "no packet counted as dropped"

out=$(sensor release --reason "vm-test: done" 2>&1) || fail "release failed: $out"
reach || fail "the other namespace is not reachable after release"
sensor isolation detach >/dev/null || fail "detach failed"
kill "$server" 2>/dev/null
$IP netns del other
pass "isolated from a veth peer on $(uname -r) (TCP and UDP dropped, $dropped packets), released, reachable again"
