# BPF-LSM is active AND usable: `bpf` is in the kernel's LSM list and a
# do-nothing bprm_check_security program loads and attaches. Never skipped:
# a kiosk kernel without it fails here.
. /usr/lib/rxsentry/vm-tests/lib.sh

lsms=$(cat /sys/kernel/security/lsm 2>&1) || fail "cannot read /sys/kernel/security/lsm: $lsms"
case ",$lsms," in
*,bpf,*) ;;
*) fail "bpf is not an active LSM: $lsms" ;;
esac
probe=$(rxsentry-probe --lsm 2>&1) || fail "bpf is listed ($lsms) but $probe"
pass "$probe; active LSMs: $lsms"
