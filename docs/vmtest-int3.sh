#!/bin/sh
# The experiment of docs/vmtest.md ("The 6.12 int3 Oops under multi-threaded TCG"), run inside a
# guest. It toggles the static key of sock:inet_sock_set_state (what attaching or detaching a BPF
# program to it does: jump-label patching of inet_sk_set_state/inet_sk_state_store with
# text_poke_bp) while loopback TCP runs through those sites on every vCPU, and reports whether
# the kernel logged an int3/Oops. No tracer involved.
#
#   K=~/.cache/tracer-vmtest/kernels/linux-image-6.12.*-amd64-unsigned/boot/vmlinuz-*
#   OUT=/tmp/int3; mkdir -p $OUT
#   PATH=~/.cache/tracer-vmtest/venv/bin:$PATH vng --verbose --run $K --cpus 2 --memory 2G \
#     --disable-kvm --qemu-opts="-accel tcg,thread=multi" --rwdir $OUT \
#     --exec "sh $PWD/docs/vmtest-int3.sh $OUT 3000" 2>&1 | tee $OUT/console.log
#
# (thread=single for the comparison.) Writes OUT/progress and OUT/result.txt; an Oops panics the
# guest, so look in the console log.
set -u
OUT=$1
N=$2
ip link set lo up
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
EN=/sys/kernel/tracing/events/sock/inet_sock_set_state/enable
CHURN='
import socket, time
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(64); a = l.getsockname()
while True:
    c = socket.create_connection(a); s, _ = l.accept(); c.close(); s.close(); time.sleep(0.002)
'
/usr/bin/python3 -c "$CHURN" &
C1=$!
/usr/bin/python3 -c "$CHURN" &
C2=$!
sleep 15
start=$(date +%s)
i=0
while [ "$i" -lt "$N" ]; do
    echo 1 > "$EN"
    echo 0 > "$EN"
    i=$((i + 1))
    if [ $((i % 10)) -eq 0 ]; then
        dmesg | grep -qE "int3|Oops|BUG:|general protection" && break
        echo "$i toggles in $(($(date +%s) - start)) s" > "$OUT/progress"
    fi
done
echo "toggles $i in $(($(date +%s) - start)) s" > "$OUT/result.txt"
dmesg | grep -E -A40 "int3|Oops|BUG:|general protection" | head -80 >> "$OUT/result.txt"
kill "$C1" "$C2"
