#!/usr/bin/env bash
# No executable of ours may define a function or variable the C library (or libm,
# libgomp) also defines: the dynamic linker would bind the library's own calls to
# ours. (A test helper named dup() once did exactly that and crashed the CUDA
# driver's start-up.) Checks plab and every test binary beside $BUILD/tests.
set -u
P=${PLAB:-./plab}
BUILD=${BUILD:-$(dirname "$P")/build}
[ -d "$BUILD/tests" ] || BUILD=build
libs=()
LDCONFIG=$(command -v ldconfig || echo /sbin/ldconfig)
for l in libc.so.6 libm.so.6 libgomp.so.1; do
    f=$("$LDCONFIG" -p | awk -v l="$l" '$1 == l && /x86-64/ {print $NF; exit}')
    [ -n "$f" ] && libs+=("$f")
done
[ ${#libs[@]} -gt 0 ] || { echo "e2e_symbols: no C library found by ldconfig"; exit 1; }
sys=$(mktemp); trap 'rm -f "$sys"' EXIT
for l in "${libs[@]}"; do nm -D --defined-only "$l" | awk '{print $3}' | sed 's/@.*//'; done | sort -u > "$sys"
bad=0 n=0
for b in "$P" "$BUILD"/tests/*; do
    [ -f "$b" ] && [ -x "$b" ] || continue
    n=$((n + 1))
    # unversioned dynamic definitions are our own (copy relocations carry @GLIBC_...)
    clash=$(nm -D --defined-only "$b" | awk '$3 !~ /@/ {print $3}' | sort -u | comm -12 - "$sys" |
            grep -vxE '_init|_fini|_edata|_end|__bss_start|__data_start|data_start|_IO_stdin_used')
    if [ -n "$clash" ]; then
        echo "e2e_symbols: $b defines $(echo $clash | tr ' ' ',') over the C library's own"
        bad=1
    fi
done
[ $n -gt 0 ] || { echo "e2e_symbols: no binaries found ($P, $BUILD/tests)"; exit 1; }
[ $bad -eq 0 ] && echo "e2e_symbols: $n executables, none defines a C library symbol"
exit $bad
