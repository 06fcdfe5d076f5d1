# The stand-in kiosk apps run: a sale at the POS, a dispense that reads the
# patient's PHI record.
. /usr/lib/rxsentry/vm-tests/lib.sh

sale=$(/opt/pos/bin/pos-app --sale 4.20) || fail "pos-app failed: $sale"
echo "$sale"
dispensed=$(/opt/pharmacy/bin/dispense --rx RX-0001) || fail "dispense failed: $dispensed"
echo "$dispensed"
case "$dispensed" in
*"patient P-0001"*) ;;
*) fail "dispense did not read the PHI record: $dispensed" ;;
esac
pass "pos-app and dispense ran; PHI read from /var/lib/pharmacy/phi"
