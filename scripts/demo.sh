#!/usr/bin/env bash
# `make demo`: an unmodified UDP program (socat) under `msock run` exchanges datagrams with the
# kernel stack of a peer namespace, through the msock netserver; then a TCP stream from
# `msock tcp connect` is recalled from its process into the netserver mid-transfer and
# arrives byte-exact. Prints a transcript; always removes the testnet and every process it
# started, whatever happens.
#
#   N-a (msock host)                         N-b (kernel peer)
#   netserver on N-a0, 198.18.0.2   <-veth->  N-b0 198.18.0.1, socat UDP echo on :7777
#   msock run -- socat - UDP:198.18.0.1:7777
#
# Needs root (network namespaces), socat and ping. Environment: CARGO_TARGET_DIR (where the
# release build is), DEMO_NAME (testnet name, default demo<pid>).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
MSOCK="$TARGET_DIR/release/msock"
LIB="$TARGET_DIR/release/libmsock.so"
NAME=${DEMO_NAME:-demo$(($$ % 100000))}
NS_A="$NAME-a"
NS_B="$NAME-b"
IF_A="$NAME-a0"
MSOCK_ADDR=198.18.0.2
PEER_ADDR=198.18.0.1
PORT=7777
LINES=("hello from an unmodified socat" "running on the msock user-level stack" "datagram three: 1234567890")

say() { printf '\n== %s\n' "$*"; }
# Prints a command (with the msock path shortened) and runs it.
show() {
    local text="$*"
    printf '$ %s\n' "${text//"$MSOCK"/msock}"
    "$@"
}
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces); try: sudo make demo"
[ -x "$MSOCK" ] && [ -f "$LIB" ] || die "$MSOCK or $LIB missing: run make first"
for tool in ip socat ping; do
    command -v "$tool" >/dev/null || die "$tool not installed"
done

WORK=$(mktemp -d /tmp/msock-demo.XXXXXX)
PIDS=()
TESTNET_UP=0
cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    say "cleanup"
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [ "$TESTNET_UP" -eq 1 ]; then
        "$MSOCK" testnet down --name "$NAME"
    fi
    if [ "$status" -ne 0 ]; then
        for log in "$WORK"/*.log; do
            [ -s "$log" ] && { printf -- '--- %s ---\n' "$(basename "$log")"; tail -n 40 "$log"; }
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Polls "$@" until it succeeds, for at most $1 tenths of a second.
wait_for() {
    local tries=$1
    shift
    while ! "$@" >/dev/null 2>&1; do
        tries=$((tries - 1))
        [ "$tries" -gt 0 ] || return 1
        sleep 0.1
    done
}

say "1. testnet: namespaces $NS_A (msock host) and $NS_B (kernel peer)"
TESTNET_UP=1
show "$MSOCK" testnet up --name "$NAME"

say "2. the msock netserver takes $MSOCK_ADDR on $IF_A"
echo "\$ ip netns exec $NS_A msock netserver --iface $IF_A --addr $MSOCK_ADDR/24 &"
ip netns exec "$NS_A" "$MSOCK" netserver --iface "$IF_A" --addr "$MSOCK_ADDR/24" \
    >"$WORK/netserver.log" 2>&1 &
PIDS+=($!)
wait_for 100 ip netns exec "$NS_A" "$MSOCK" stat || die "netserver did not come up"
echo "netserver running (pid ${PIDS[-1]})"

say "3. the kernel of $NS_B reaches the netserver: ARP and ICMP echo answered by msock"
show ip netns exec "$NS_B" ping -c 2 -i 0.2 -W 2 "$MSOCK_ADDR"
show ip -n "$NS_B" neigh show "$MSOCK_ADDR"

say "4. a kernel UDP echo server in $NS_B on $PEER_ADDR:$PORT"
echo "\$ ip netns exec $NS_B socat UDP4-RECVFROM:$PORT,bind=$PEER_ADDR,fork PIPE &"
ip netns exec "$NS_B" socat "UDP4-RECVFROM:$PORT,bind=$PEER_ADDR,fork" PIPE >"$WORK/echo.log" 2>&1 &
PIDS+=($!)
wait_for 50 sh -c "ip netns exec '$NS_B' ss -Hunl 'sport = :$PORT' | grep -q ." \
    || die "echo server did not start"

say "5. an unmodified socat under msock run in $NS_A sends ${#LINES[@]} datagrams"
echo "\$ ip netns exec $NS_A msock run -- socat -T 4 - UDP4:$PEER_ADDR:$PORT"
# One line per datagram: socat sends each read of stdin as one datagram, so pace the lines.
# The last pause keeps socat alive while the netserver's view is printed (step 6).
mkfifo "$WORK/stat-now"
{
    for line in "${LINES[@]}"; do
        printf '%s\n' "$line"
        sleep 0.3
    done
    echo >"$WORK/stat-now"
    sleep 2
} | ip netns exec "$NS_A" "$MSOCK" run --lib "$LIB" -- socat -T 4 - "UDP4:$PEER_ADDR:$PORT" \
    >"$WORK/replies.txt" 2>"$WORK/client.log" &
CLIENT=$!
PIDS+=("$CLIENT")
read -r _ <"$WORK/stat-now"
sleep 0.3

say "6. while it runs: the netserver's view (the socket is CACHED in socat's pid; its requests"
echo "   were socket, bind and connect only: every datagram moved with no netserver call)"
show ip netns exec "$NS_A" "$MSOCK" stat
wait "$CLIENT" || die "socat under msock run failed"

say "7. what came back"
for line in "${LINES[@]}"; do
    printf '  -> %s\n' "$line"
done
echo "echoed back by the kernel peer:"
sed 's/^/  <- /' "$WORK/replies.txt"
sent=$(printf '%s\n' "${LINES[@]}")
if [ "$(cat "$WORK/replies.txt")" != "$sent" ]; then
    die "echo differs from what was sent"
fi
echo "all ${#LINES[@]} datagrams came back byte-exact"


TCP_PORT=5001
say "8. TCP: msock tcp connect in $NS_A streams 8 MiB to a kernel socat listener in $NS_B"
echo "   (the connection is cached in the msock process: it sends and receives on its own channel)"
echo "\$ ip netns exec $NS_B socat -u TCP4-LISTEN:$TCP_PORT,bind=$PEER_ADDR CREATE:tcp.out &"
ip netns exec "$NS_B" socat -u "TCP4-LISTEN:$TCP_PORT,bind=$PEER_ADDR,reuseaddr" \
    "CREATE:$WORK/tcp.out" >"$WORK/tcp-sink.log" 2>&1 &
SINK=$!
PIDS+=("$SINK")
wait_for 50 sh -c "ip netns exec '$NS_B' ss -Hltn 'sport = :$TCP_PORT' | grep -q ." \
    || die "TCP sink did not start"
head -c $((4 << 20)) /dev/urandom >"$WORK/tcp.first"
head -c $((4 << 20)) /dev/urandom >"$WORK/tcp.second"
cat "$WORK/tcp.first" "$WORK/tcp.second" >"$WORK/tcp.in"
mkfifo "$WORK/tcp-release"
echo "\$ (first 4 MiB; wait; next 4 MiB) | ip netns exec $NS_A msock tcp connect $PEER_ADDR:$TCP_PORT --info"
{
    cat "$WORK/tcp.first"
    read -r _ <"$WORK/tcp-release"
    cat "$WORK/tcp.second"
} | ip netns exec "$NS_A" "$MSOCK" tcp connect "$PEER_ADDR:$TCP_PORT" --info \
    >/dev/null 2>"$WORK/tcp-client.log" &
TCP_CLIENT=$!
PIDS+=("$TCP_CLIENT")
tcp_row() { ip netns exec "$NS_A" "$MSOCK" stat | grep "$PEER_ADDR:$TCP_PORT" | grep "$1"; }
wait_for 100 tcp_row CACHED || die "no cached TCP endpoint"
show sh -c "ip netns exec $NS_A $MSOCK stat | grep -E '^proto|$PEER_ADDR:$TCP_PORT'"
TCP_ID=$(tcp_row CACHED | awk '{print $2}')

say "9. recall (paper §3.1): the netserver asks the process to flush the connection to it"
echo "   (the engine's whole state moves into the netserver; the process keeps the socket and"
echo "   now moves its bytes with send/recv requests; the stream goes on undisturbed)"
show ip netns exec "$NS_A" "$MSOCK" recall "$TCP_ID"
wait_for 100 tcp_row FLUSHED || die "the connection was not flushed"
show sh -c "ip netns exec $NS_A $MSOCK stat | grep -E '^proto|$PEER_ADDR:$TCP_PORT|recalls'"
echo >"$WORK/tcp-release"
wait "$TCP_CLIENT" || die "msock tcp connect failed"
wait "$SINK" || die "the kernel sink failed"
sed 's/^/  /' "$WORK/tcp-client.log"
if ! cmp -s "$WORK/tcp.in" "$WORK/tcp.out"; then
    die "the kernel peer received different bytes"
fi
echo "the kernel peer received all 8 MiB byte-exact (sha256 $(sha256sum <"$WORK/tcp.out" | cut -c1-16)…)"

HTTP_PORT=8080
say "10. an unmodified TCP server: python3 -m http.server under msock run in $NS_A, curl in $NS_B"
echo "   (accept gives the process a cached connection; the kernel of $NS_A has no $MSOCK_ADDR)"
mkdir -p "$WORK/www"
head -c $((2 << 20)) /dev/urandom >"$WORK/www/blob"
echo "\$ ip netns exec $NS_A msock run -- python3 -m http.server $HTTP_PORT --bind $MSOCK_ADDR &"
(cd "$WORK/www" && exec ip netns exec "$NS_A" "$MSOCK" run --lib "$LIB" -- \
    python3 -m http.server "$HTTP_PORT" --bind "$MSOCK_ADDR") >"$WORK/http.log" 2>&1 &
PIDS+=($!)
wait_for 100 ip netns exec "$NS_B" curl -sf -o /dev/null "http://$MSOCK_ADDR:$HTTP_PORT/" \
    || die "http.server under msock did not answer"
show ip netns exec "$NS_B" curl -sS -o "$WORK/blob.got" -w '%{http_code} %{size_download} bytes\n' \
    "http://$MSOCK_ADDR:$HTTP_PORT/blob"
cmp -s "$WORK/www/blob" "$WORK/blob.got" || die "curl got different bytes"
echo "curl received the 2 MiB file byte-exact"

CS_PORT=7070
CDEMO="$ROOT/cdemo/bin"
say "11. the paper's Fig. 5 concurrent server (accept, fork, the child serves) with SO_CONCURRENT_SERVER"
echo "   (delayed caching, §4.2: each accepted connection stays in the netserver until the fork,"
echo "   then is cached straight into the child: one cache and no flush per connection)"
[ -x "$CDEMO/concurrent_server" ] && [ -x "$CDEMO/echo_client" ] || die "cdemo programs missing: make cdemo"
sharing() { ip netns exec "$NS_A" "$MSOCK" stat | grep '^sharing'; }
before=$(sharing)
echo "\$ ip netns exec $NS_A msock run -- cdemo/bin/concurrent_server -c -p $CS_PORT -n 10 &"
ip netns exec "$NS_A" "$MSOCK" run --lib "$LIB" -- "$CDEMO/concurrent_server" -a "$MSOCK_ADDR" \
    -p "$CS_PORT" -c -m echo -n 10 -T 10 >"$WORK/cs.log" 2>&1 &
CS=$!
PIDS+=("$CS")
wait_for 100 grep -q '^ready' "$WORK/cs.log" || die "concurrent_server did not start"
show ip netns exec "$NS_B" "$CDEMO/echo_client" -r -a "$MSOCK_ADDR" -p "$CS_PORT" -s 64 -n 10 -w 0 -T 10
wait "$CS" || die "concurrent_server failed"
echo "netserver counters before and after the 10 connections:"
echo "  $before"
echo "  $(sharing)"
