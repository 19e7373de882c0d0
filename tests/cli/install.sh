#!/bin/bash
# make install puts a libtrail that programs build against: the umbrella
# header, one header per subsystem, the forwarders for earlier header names,
# trail.pc, and nothing internal.
. "$TRAIL_TOP/tests/tap.sh"
root=$T/root
check "make install into a staging root" make -s -C "$TRAIL_TOP" B="$TRAIL_BUILD" DESTDIR="$root" PREFIX=/usr/local install
inc=$root/usr/local/include/trail
check "trail.h is installed" test -f "$inc/trail.h"
check "one header per subsystem" test -f "$inc/core/core.h" -a -f "$inc/ledger/ledger.h" -a -f "$inc/model/model.h"
check_eq "no internal header is installed" "$(cd "$inc" && find . -name '*_int.h')" ""
pc() { PKG_CONFIG_PATH=$root/usr/local/lib/pkgconfig pkg-config --define-variable=includedir="$root/usr/local/include" \
	--define-variable=libdir="$root/usr/local/lib" "$@" trail; }
if ! command -v pkg-config >/dev/null; then
	skip "programs build against the installed library" "no pkg-config"
	finish; exit
fi
cat > "$T/new.c" <<'C'
#include <stdio.h>
#include "trail.h"
int main(void)
{
	trail_init();
	printf("%s %s\n", TRAIL_VERSION, trail_strerror(TRAIL_EDATA));
	return 0;
}
C
cat > "$T/old.c" <<'C'
#include <stdio.h>
#include "json.h"
#include "merkle.h"
#include "settle.h"
int main(void)
{
	trail_hash h;
	trail_merkle_leaf((const uint8_t *)"x", 1, h);
	printf("%02x\n", h[0]);
	return 0;
}
C
for p in new old; do
	# shellcheck disable=SC2046
	check "a program with the $p header names builds and links" \
		${CC:-cc} -o "$T/$p" "$T/$p.c" $(pc --cflags) $(pc --libs)
	check "and runs" "$T/$p"
done
finish
