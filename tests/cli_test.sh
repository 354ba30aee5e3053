#!/usr/bin/env bash
# Integration test of the shmbus command-line tool against a real shmbusd on a private bus.
#   cli_test.sh SHMBUSD SHMBUS
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 SHMBUSD SHMBUS" >&2
  exit 2
fi
SHMBUSD=$1
SHMBUS=$2
BUS="clitest$$"
dir=$(mktemp -d)
SOCK="$dir/bus.sock"
daemon_pid=""
background_pids=()

cleanup() {
  local pid
  for pid in "${background_pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  if [[ -n "$daemon_pid" ]]; then
    kill -TERM "$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*" >&2
  echo "--- shmbusd log ---" >&2
  cat "$dir/daemon.log" >&2 || true
  exit 1
}

show() { printf '%q' "$1"; }

expect_eq() {  # what expected actual
  [[ "$2" == "$3" ]] || fail "$1: expected $(show "$2"), got $(show "$3")"
}

# Sets $content to the exact content of a file, trailing newlines included ($(...) would
# strip them).
read_content() {
  content=$(cat "$1"; printf x)
  content=${content%x}
}

# shmbus on the test bus. `timeout` keeps a hung command from stalling the whole suite.
cli() { timeout 20 "$SHMBUS" --bus "$BUS" --socket "$SOCK" "$@"; }

# Runs a command that must fail; sets $rc and $err (its stderr).
run_failing() {
  rc=0
  "$@" >"$dir/fail.out" 2>"$dir/fail.err" || rc=$?
  err=$(cat "$dir/fail.err")
  [[ $rc -ne 0 ]] || fail "'$*' exited 0; expected a failure (stdout: $(show "$(cat "$dir/fail.out")"))"
}

# An error is one line "shmbus: ..." on stderr: no stack of messages, no "terminate called".
expect_one_error_line() {  # what
  local lines
  lines=$(printf '%s\n' "$err" | wc -l)
  [[ $lines -eq 1 && "$err" == "shmbus: "* ]] ||
    fail "$1: expected one line 'shmbus: ...' on stderr, got $(show "$err")"
}

# Runs a command until it prints `expected` (up to 5 s): what the daemon reports follows
# subscribers starting and exiting shortly after, not at once.
wait_output() {  # expected command...
  local expected=$1 attempt got=""
  shift
  for ((attempt = 0; attempt < 100; ++attempt)); do
    got=$("$@" 2>&1) || true
    [[ "$got" == "$expected" ]] && return 0
    sleep 0.05
  done
  fail "timed out waiting for '$*' to print $(show "$expected"); it printed $(show "$got")"
}

# Waits up to `seconds` for a background process; sets $rc to its exit status.
wait_exit() {  # pid seconds what
  local i
  for ((i = 0; i < $2 * 20; ++i)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.05
  done
  kill -0 "$1" 2>/dev/null && fail "$3 still running after $2 s"
  rc=0
  wait "$1" || rc=$?
}

# Background subscriber: output to $dir/NAME.out, stderr to $dir/NAME.err; sets $sub_pid.
start_sub() {  # name args...
  local name=$1
  shift
  "$SHMBUS" --bus "$BUS" --socket "$SOCK" "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
  sub_pid=$!
  background_pids+=("$sub_pid")
}

expect_sub_output() {  # name expected
  read_content "$dir/$1.out"
  [[ "$content" == "$2" ]] ||
    fail "$1 output: expected $(show "$2"), got $(show "$content") (stderr: $(show "$(cat "$dir/$1.err")"))"
}

# Waits up to 5 s for a running subscriber to have printed exactly `expected`.
wait_sub_output() {  # name expected
  local attempt
  for ((attempt = 0; attempt < 100; ++attempt)); do
    read_content "$dir/$1.out"
    [[ "$content" == "$2" ]] && return 0
    sleep 0.05
  done
  expect_sub_output "$1" "$2"
}

# ---- daemon ---------------------------------------------------------------------------------

printf '[[channel]]\npattern = "small:*"\nring_bytes = 4096\n' >"$dir/shmbusd.toml"
"$SHMBUSD" --bus "$BUS" --socket "$SOCK" -c "$dir/shmbusd.toml" >"$dir/daemon.log" 2>&1 &
daemon_pid=$!

ready=0
for ((i = 0; i < 50; ++i)); do
  if cli ping >"$dir/ping.out" 2>/dev/null; then
    ready=1
    break
  fi
  kill -0 "$daemon_pid" 2>/dev/null || fail "shmbusd exited at startup"
  sleep 0.1
done
[[ $ready -eq 1 ]] || fail "'shmbus ping' did not succeed within 5 s of starting shmbusd"
[[ "$(cat "$dir/ping.out")" =~ ^PONG\ \([0-9]+\ us\)$ ]] ||
  fail "ping: expected 'PONG (N us)', got $(show "$(cat "$dir/ping.out")")"
[[ "$(cli ping --json)" =~ ^\{\"pong\":true,\"rtt_us\":[0-9.e+-]+\}$ ]] ||
  fail "ping --json: got $(show "$(cli ping --json)")"

# ---- publish without subscribers ------------------------------------------------------------

expect_eq "pub to a channel nobody subscribes" "0" "$(cli pub nobody hello)"
expect_eq "pub --no-raw (redis-cli tty form)" "(integer) 0" "$(cli pub nobody hello --no-raw)"
expect_eq "pub --json" "0" "$(cli pub nobody hello --json)"

# ---- sub --count 2 --raw --------------------------------------------------------------------

start_sub sub_chat sub chat --count 2 --raw --timeout 20
pid_chat=$sub_pid
wait_output $'chat\n1' cli numsub chat
expect_eq "pub chat hello (one subscriber)" "1" "$(cli pub chat hello)"
# The subscriber exits on this message and may be gone before publish reads the receiver
# count: that is checked near the end ("pub to a --count 1 subscriber"); here, delivery.
cli pub chat world >/dev/null
wait_exit "$pid_chat" 10 "sub --count 2"
expect_eq "sub --count 2 exit status" 0 "$rc"
expect_sub_output sub_chat $'subscribe\nchat\n1\nmessage\nchat\nhello\nmessage\nchat\nworld\n'

# ---- tty form with escapes ------------------------------------------------------------------

start_sub sub_esc sub esc --count 1 --no-raw --timeout 20
pid_esc=$sub_pid
wait_output $'esc\n1' cli numsub esc
cli pub esc $'a\nb"c\\d\x01\xff' >/dev/null  # receivers: see "pub to a --count 1 subscriber"
wait_exit "$pid_esc" 10 "sub esc --count 1"
expect_eq "sub esc exit status" 0 "$rc"
expect_sub_output sub_esc "$(printf '%s\n' \
  'Reading messages... (press Ctrl-C to quit)' \
  '1) "subscribe"' '2) "esc"' '3) (integer) 1' \
  '1) "message"' '2) "esc"' '3) "a\nb\"c\\d\x01\xff"')"$'\n'

# ---- psub --json on a channel created after subscribing --------------------------------------

start_sub psub_news psub 'news.*' --count 1 --json --timeout 20
pid_news=$sub_pid
wait_output 1 cli numpat
cli pub news.art breaking >/dev/null  # receivers: see "pub to a --count 1 subscriber"
wait_exit "$pid_news" 10 "psub --count 1"
expect_eq "psub exit status" 0 "$rc"
read_content "$dir/psub_news.out"
[[ "$content" =~ ^\{\"type\":\"pmessage\",\"pattern\":\"news\.\*\",\"channel\":\"news\.art\",\"payload\":\"breaking\",\"sequence\":0,\"publish_unix_ns\":[0-9]+,\"lost_before\":0\}$'\n'$ ]] ||
  fail "psub --json: expected one pmessage object for news.art, got $(show "$content")"
wait_output 0 cli numpat  # the psub above has exited

# ---- --json keeps every byte of a name: base64 where it is not UTF-8 -------------------------

start_sub psub_bytes psub 'bin:*' --count 1 --json --timeout 20
pid_bytes=$sub_pid
wait_output 1 cli numpat
cli pub -- $'bin:\xff' $'caf\xc3\xa9' >/dev/null
wait_exit "$pid_bytes" 10 "psub bin:* --count 1"
expect_eq "psub bin:* exit status" 0 "$rc"
read_content "$dir/psub_bytes.out"
[[ "$content" =~ ^\{\"type\":\"pmessage\",\"pattern\":\"bin:\*\",\"channel_base64\":\"YmluOv8=\",\"payload\":\"café\", ]] ||
  fail "psub --json: expected channel_base64 for bin:\\xff, got $(show "$content")"
wait_output 0 cli numpat

# ---- introspection while subscribers run -----------------------------------------------------

start_sub sub_long sub chat other --raw --timeout 60
pid_long=$sub_pid
start_sub psub_long psub 'news.*' 'x?' --raw --timeout 60
pid_plong=$sub_pid
wait_output $'chat\n1\nother\n1' cli numsub chat other
wait_output 2 cli numpat
wait_output $'chat\nother' cli channels  # the subscribers of esc and lines have left

expect_eq "channels --no-raw" $'1) "chat"\n2) "other"' "$(cli channels --no-raw)"
expect_eq "channels --json" '["chat","other"]' "$(cli channels --json)"
expect_eq "channels 'o*'" "other" "$(cli channels 'o*')"
expect_eq "channels 'zz*' --no-raw" "(empty array)" "$(cli channels 'zz*' --no-raw)"
# As redis-cli in a pipe: an empty array is one empty line ($(...) would drop it: the '.').
expect_eq "channels 'zz*' (raw)" $'\n.' "$(cli channels 'zz*'; echo .)"
expect_eq "numsub chat other nobody" $'chat\n1\nother\n1\nnobody\n0' "$(cli numsub chat other nobody)"
expect_eq "numsub --no-raw" $'1) "chat"\n2) (integer) 1\n3) "nobody"\n4) (integer) 0' \
  "$(cli numsub chat nobody --no-raw)"
expect_eq "numsub --json" '{"chat":1,"other":1,"nobody":0}' "$(cli numsub chat other nobody --json)"
expect_eq "numpat" "2" "$(cli numpat)"
expect_eq "numpat --no-raw" "(integer) 2" "$(cli numpat --no-raw)"
expect_eq "numpat --json" "2" "$(cli numpat --json)"

expect_eq "pub chat third (channel subscriber)" "1" "$(cli pub chat third)"
expect_eq "pub news.sport (pattern subscriber)" "1" "$(cli pub news.sport goal)"
expect_eq "pub xy (pattern 'x?')" "1" "$(cli pub xy z)"

expected_long=$'subscribe\nchat\n1\nsubscribe\nother\n2\nmessage\nchat\nthird\n'
expected_plong=$'psubscribe\nnews.*\n1\npsubscribe\nx?\n2\npmessage\nnews.*\nnews.sport\ngoal\npmessage\nx?\nxy\nz\n'
# Both print what was published before they are stopped.
wait_sub_output sub_long "$expected_long"
wait_sub_output psub_long "$expected_plong"
kill -INT "$pid_long"
wait_exit "$pid_long" 5 "sub after SIGINT"
expect_eq "sub exit status after SIGINT" 0 "$rc"
expect_sub_output sub_long "$expected_long"
kill -TERM "$pid_plong"
wait_exit "$pid_plong" 5 "psub after SIGTERM"
expect_eq "psub exit status after SIGTERM" 0 "$rc"
expect_sub_output psub_long "$expected_plong"

# ---- bulk publishing ------------------------------------------------------------------------

summary=$(cli pub rated tick --count 50 --rate 500 --json)
[[ "$summary" =~ ^\{\"messages\":50,\"seconds\":([0-9.e+-]+),\"msg_per_sec\":[0-9.e+-]+,\"receivers\":0\}$ ]] ||
  fail "pub --count 50 --rate 500 --json: got $(show "$summary")"
seconds=${BASH_REMATCH[1]}
# 50 messages at 500/s: the last is due 49/500 = 0.098 s after the first.
awk -v s="$seconds" 'BEGIN { exit !(s >= 0.09 && s < 5) }' ||
  fail "pub --rate 500 of 50 messages took $seconds s; expected about 0.098 s"

summary=$(cli pub counted x --count 1000)
[[ "$summary" =~ ^1000\ messages\ in\ [0-9.]+\ s\ \([0-9]+\ msg/s\),\ 0\ receivers\ in\ total$ ]] ||
  fail "pub --count 1000: got $(show "$summary")"

# No --count: the subscriber stays, so every line has one receiver.
start_sub sub_lines sub lines --raw --timeout 20
pid_lines=$sub_pid
wait_output $'lines\n1' cli numsub lines
summary=$(printf 'l1\nl2\nl3\n' | cli pub lines -)
[[ "$summary" =~ ^3\ messages\ in\ [0-9.]+\ s\ \([0-9]+\ msg/s\),\ 3\ receivers\ in\ total$ ]] ||
  fail "pub lines - (stdin): got $(show "$summary")"
wait_sub_output sub_lines $'subscribe\nlines\n1\nmessage\nlines\nl1\nmessage\nlines\nl2\nmessage\nlines\nl3\n'
kill -INT "$pid_lines"
wait_exit "$pid_lines" 5 "sub lines after SIGINT"
expect_eq "sub lines exit status after SIGINT" 0 "$rc"

# ---- names byte for byte -------------------------------------------------------------------

# Brackets, commas, braces, '=', a leading '-', spaces and bytes >= 0x80 reach every command
# as written (CLI11 alone would read "[x]" as x and "[a,b]" as a and b).
odd_names=('[x]' '[a,b]' 'a,b' '{c}' 'x}' 'e=f' '-d' 'g h' $'caf\xc3\xa9' $'\xff\xfe')
start_sub sub_odd sub --raw --timeout 20 -- "${odd_names[@]}"
pid_odd=$sub_pid
start_sub psub_odd psub --raw --timeout 20 -- '[[]x]' 'h[ae]llo'
pid_podd=$sub_pid
expected_numsub=""
for name in "${odd_names[@]}"; do expected_numsub+="$name"$'\n1\n'; done
wait_output "${expected_numsub%$'\n'}" cli numsub --raw -- "${odd_names[@]}"
expect_eq "numsub of x (not held: '[x]' is)" $'x\n0' "$(cli numsub --raw -- x)"
expect_eq "numpat with two patterns" 2 "$(cli numpat)"
expected_sub=""
count=0
for name in "${odd_names[@]}"; do
  count=$((count + 1))
  expected_sub+=$'subscribe\n'"$name"$'\n'"$count"$'\n'
done
for name in "${odd_names[@]}"; do
  receivers=$(cli pub -- "$name" "to $name")
  # '[x]' also matches the pattern '[[]x]'.
  [[ "$name" == '[x]' ]] && want=2 || want=1
  expect_eq "pub to $(show "$name")" "$want" "$receivers"
  expected_sub+=$'message\n'"$name"$'\nto '"$name"$'\n'
done
expect_eq "pub to hallo" 1 "$(cli pub hallo '[y]')"
wait_sub_output sub_odd "$expected_sub"
wait_sub_output psub_odd $'psubscribe\n[[]x]\n1\npsubscribe\nh[ae]llo\n2\npmessage\n[[]x]\n[x]\nto [x]\npmessage\nh[ae]llo\nhallo\n[y]\n'
expect_eq "channels matching '[[]*'" $'[a,b]\n[x]' "$(cli channels --raw '[[]*')"
kill -TERM "$pid_odd" "$pid_podd"

# ---- stats ----------------------------------------------------------------------------------

stats_json=$(cli stats --json)
for want in '{"channel":"chat","published":3,' '{"channel":"nobody","published":3,' \
  '{"channel":"rated","published":50,' '{"channel":"counted","published":1000,' \
  '{"channel":"lines","published":3,'; do
  [[ "$stats_json" == *"$want"* ]] || fail "stats --json: no $(show "$want") in $(show "$stats_json")"
done
expect_eq "stats --json 'rat*' channel count" 1 "$(cli stats 'rat*' --json | grep -o '"channel":' | wc -l)"
stats_table=$(cli stats)
[[ "$stats_table" == *CHANNEL*PUBLISHED* && "$stats_table" == *$'\n'"counted "*" 1000 "* ]] ||
  fail "stats table: expected a header and a 'counted' row with 1000, got $(show "$stats_table")"

rc=0
watch=$(cli stats --watch --iterations 2 --interval 0.2) || rc=$?
expect_eq "stats --watch --iterations 2 exit status" 0 "$rc"
[[ "$watch" == *chat* ]] || fail "stats --watch: channel 'chat' missing from $(show "$watch")"
expect_eq "stats --watch refreshes (header lines)" 2 "$(grep -c '^CHANNEL ' <<<"$watch")"
[[ "$watch" != *$'\x1b'* ]] || fail "stats --watch wrote ANSI escapes to a non-tty"
rc=0
watch=$(cli stats --watch --iterations 2 --interval 0.2 --json) || rc=$?
expect_eq "stats --watch --json exit status" 0 "$rc"
expect_eq "stats --watch --json lines" 2 "$(grep -c '^{"time_unix_ns":.*"channel":"chat"' <<<"$watch")"

# ---- errors ---------------------------------------------------------------------------------

long_name=$(printf 'a%.0s' {1..2000})
run_failing cli pub "$long_name" x
expect_one_error_line "pub with a 2000-byte channel name"
[[ "$err" == *1024* ]] || fail "pub with a 2000-byte channel name: stderr does not name the limit 1024: $(show "$err")"

for command in ping "pub x y" "sub x" channels "numsub x" numpat; do
  # shellcheck disable=SC2086  # word splitting of $command is intended
  run_failing timeout 20 "$SHMBUS" --bus "nodaemon$$" --socket "$dir/nodaemon.sock" $command
  expect_one_error_line "$command without a daemon"
  [[ "$err" == *"$dir/nodaemon.sock"* ]] ||
    fail "$command without a daemon: stderr does not name the socket: $(show "$err")"
  [[ "$err" == *"shmbusd --bus nodaemon$$ --socket $dir/nodaemon.sock"* ]] ||
    fail "$command without a daemon: stderr does not say how to start shmbusd: $(show "$err")"
done
# stats reads the bus's shared memory by bus name, without the socket.
run_failing timeout 20 "$SHMBUS" --bus "nodaemon$$" --socket "$dir/nodaemon.sock" stats
expect_one_error_line "stats without a daemon"
[[ "$err" == *"nodaemon$$"* && "$err" == *shmbusd* ]] ||
  fail "stats without a daemon: stderr does not name the bus and shmbusd: $(show "$err")"

# Channel small:* has a 4 KiB ring (the config above), so messages up to 4096/2 - 32 bytes.
expect_eq "pub of the largest message small:x carries" "0" "$(cli pub small:x "$(printf 'm%.0s' {1..2016})")"
run_failing cli pub small:x "$(printf 'm%.0s' {1..3000})"
expect_one_error_line "pub over the channel limit"
[[ "$err" == *2016* && "$err" == *shmbusd.toml* ]] ||
  fail "pub over the channel limit: stderr does not name the limit 2016 and shmbusd.toml: $(show "$err")"

run_failing cli pub only-a-channel
expect_eq "pub without a message: exit status" 2 "$rc"
expect_one_error_line "pub without a message"
run_failing cli sub x --from nonsense
expect_eq "sub --from nonsense: exit status" 2 "$rc"
run_failing cli pub x - --count 2
expect_eq "pub - --count: exit status" 2 "$rc"

# ---- receiver count of a message whose subscriber leaves at once ------------------------------

# publish() returns the subscriptions that receive the message. A `sub --count 1` receives it
# and exits; the count must still include it. Regression guard: libshmbus once read the
# counter after the commit, by when the subscriber could be gone. Checked last, so the
# shutdown checks still run if it fails.
race_results=""
for once in once1 once2 once3 once4 once5; do
  start_sub "sub_$once" sub "$once" --count 1 --raw --timeout 20
  wait_output "$once"$'\n1' cli numsub "$once"
  race_results+="$(cli pub "$once" x) "
  wait_exit "$sub_pid" 10 "sub $once --count 1"
  expect_eq "sub $once exit status" 0 "$rc"
  expect_sub_output "sub_$once" "subscribe"$'\n'"$once"$'\n1\nmessage\n'"$once"$'\nx\n'
done
deferred_failure=""
[[ "$race_results" == "1 1 1 1 1 " ]] ||
  deferred_failure="pub to a --count 1 subscriber: expected receivers '1 1 1 1 1 ', got '$race_results'"

# ---- a daemon killed and started again --------------------------------------------------------

# `sub` and `psub` stay up across it, say once on stderr that they reconnected, and receive
# what is published to the new daemon.
start_sub sub_restart sub restart:x --raw --timeout 30
pid_restart=$sub_pid
start_sub psub_restart psub 'restart:*' --raw --timeout 30
pid_prestart=$sub_pid
wait_output $'restart:x\n1' cli numsub restart:x
kill -KILL "$daemon_pid"
wait "$daemon_pid" 2>/dev/null || true
"$SHMBUSD" --bus "$BUS" --socket "$SOCK" -c "$dir/shmbusd.toml" >>"$dir/daemon.log" 2>&1 &
daemon_pid=$!
wait_output $'restart:x\n1' cli numsub restart:x
wait_output "1" cli numpat
expect_eq "pub after the restart" 2 "$(cli pub restart:x again)"
wait_sub_output sub_restart $'subscribe\nrestart:x\n1\nmessage\nrestart:x\nagain\n'
wait_sub_output psub_restart $'psubscribe\nrestart:*\n1\npmessage\nrestart:*\nrestart:x\nagain\n'
for name in sub_restart psub_restart; do
  reconnected=$(grep -c '^shmbus: reconnected after [0-9]* ms to shmbusd' "$dir/$name.err" || true)
  expect_eq "$name: lines saying it reconnected" 1 "$reconnected"
done
kill -0 "$pid_restart" 2>/dev/null || fail "sub exited across the restart"
kill -0 "$pid_prestart" 2>/dev/null || fail "psub exited across the restart"
kill -TERM "$pid_restart" "$pid_prestart"

# ---- daemon shutdown ------------------------------------------------------------------------

kill -TERM "$daemon_pid"
wait_exit "$daemon_pid" 10 "shmbusd after SIGTERM"
daemon_pid=""
expect_eq "shmbusd exit status after SIGTERM" 0 "$rc"
[[ ! -e "$SOCK" ]] || fail "shmbusd left its socket $SOCK behind"
leftovers=$(compgen -G "/dev/shm/shmbus.$BUS.*" || true)
[[ -z "$leftovers" ]] || fail "shmbusd left shared memory behind: $leftovers"

[[ -z "$deferred_failure" ]] || fail "$deferred_failure"
echo "cli test: all checks passed"
