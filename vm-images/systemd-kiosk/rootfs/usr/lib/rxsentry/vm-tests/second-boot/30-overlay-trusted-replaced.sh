# On the overlay root: the trusted apps and system programs (on the
# read-only lower disk) run from the POS service; a trusted app replaced on
# the overlay (written in place: copied up to the tmpfs; or a new file moved
# over it) is refused with EPERM.
. /usr/lib/rxsentry/vm-tests/lib.sh

APP=/opt/pos/bin/pos-app
ok=$(pos_run "$APP --sale 1.00; /usr/bin/true && echo true-ran")
case "$ok" in
*"sale of 1.00 recorded"*true-ran*rc=0) ;;
*) fail "trusted programs did not run from pos.service on the overlay root: $ok" ;;
esac
cp -p "$APP" /var/tmp/pos-app.orig
echo '# tampered' >>"$APP" || fail "cannot write $APP"
[ -e "/media/root-rw/upper$APP" ] || fail "$APP was not copied up to the tmpfs"
out=$(pos_run "$APP --sale 2.00")
case "$out" in
*"not permitted"*) ;;
*) fail "$APP written in place still runs: $out" ;;
esac
cp /var/tmp/pos-app.orig /var/tmp/pos-app.new && echo 'echo evil' >>/var/tmp/pos-app.new
mv /var/tmp/pos-app.new "$APP" || fail "cannot replace $APP"
out2=$(pos_run "$APP --sale 3.00")
case "$out2" in
*"not permitted"*) ;;
*) fail "$APP replaced by a new file still runs: $out2" ;;
esac
/usr/bin/true || fail "trusted /usr/bin/true does not run"
pass "pos-app and /usr/bin/true ran from the lower disk; pos-app written in place (copied up) and replaced by a new file both refused with EPERM"
