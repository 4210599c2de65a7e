#!/bin/bash
# Runs every test of s3chain on a fresh Debian 12: builds what is needed,
# starts the local S3 server, then runs the unit tests (the driver's and
# the command's), the patch series checks (staleness, each patch
# building and passing its unit tests on its own, checkpatch), the
# iotests against the server, QEMU's generic iotests over s3chain, the
# tests of the s3chain command, a short
# run of each fuzzer, and the iotests and some of the command's tests
# again with the command and QEMU's tools built with ASan and UBSan.
# Ends with "N passed, N failed" and exits non-zero if anything failed.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -uo pipefail
. "$(dirname "$0")/common.sh"

passed=0
failed=0
failures=()

# Runs a step, and says how long it took: the whole run must stay well
# under CI's 90 minutes
step() {
    local name=$1 start=$SECONDS
    shift
    echo "=== $name"
    if "$@"; then
        passed=$((passed + 1))
        echo "--- ok: $name ($((SECONDS - start)) s)"
    else
        failed=$((failed + 1))
        failures+=("$name")
        echo "--- FAILED: $name ($((SECONDS - start)) s)"
    fi
}

"$REPO/scripts/build.sh" || { echo "build failed"; echo "0 passed, 1 failed"; exit 1; }
echo "built in $SECONDS s"
env_file=$("$REPO/scripts/s3-server.sh" start) || {
    echo "the S3 server did not start"; echo "0 passed, 1 failed"; exit 1;
}

# The driver's unit tests of the QEMU build in $1, logged to $2, with
# the environment that follows
unit_tests_of() {
    local dir=$1 log=$2
    shift 2
    env "$@" meson test -C "$dir" --no-rebuild --print-errorlogs \
        test-s3chain-sigv4 test-s3chain-url test-s3chain-manifest \
        test-s3chain-seal test-s3chain-plan 2>&1 |
        tee "$log"
    [ "${PIPESTATUS[0]}" -eq 0 ] || return 1
    # AWS's suite must have run, not been skipped
    grep -q 'test-s3chain-sigv4 *OK .* 35 subtests passed' "$log"
}

unit_tests() {
    unit_tests_of "$QEMU_BUILD" "$BUILD/unit-tests.log"
}

checkpatch() {
    "$QEMU_SRC/scripts/checkpatch.pl" --no-signoff \
        $(ls "$REPO"/patches/*.patch | grep -v /0000-)
}

# The iotests that ./check's arguments after "--" select, of the QEMU
# build in $1, logged to $2, with the VAR=VALUE settings between; every
# one must run and pass
iotests_of() {
    local dir=$1 log=$2 settings=()
    shift 2
    while [ "$1" != -- ]; do
        settings+=("$1")
        shift
    done
    shift
    (
        cd "$dir/tests/qemu-iotests" &&
        env S3CHAIN_TEST_ENV="$env_file" \
            S3CHAIN_STOCK_QEMU=/usr/bin/qemu-system-x86_64 "${settings[@]}" \
            "$QEMU_BUILD/pyvenv/bin/python3" ./check -qcow2 "$@"
    ) 2>&1 | tee "$log"
    local status=${PIPESTATUS[0]}
    if grep -q '^Not run:' "$log"; then
        echo "iotests: some did not run"
        return 1
    fi
    grep -q '^Passed all [0-9]* iotests' "$log" && [ "$status" -eq 0 ]
}

iotests() {
    iotests_of "$QEMU_BUILD" "$BUILD/iotests.log" -- -g s3chain
}

# QEMU's own generic iotests with their images in the bucket (the
# -s3chain protocol of patches/0009): those of -g auto and -g quick that
# run over a protocol other than file, all of which pass (docs/testing.rst
# has the counts).  Named one by one, as checking the other two hundred
# only to skip them costs minutes.
GENERIC_IOTESTS="001 002 003 004 005 007 008 009 010 011 017 021 022 027
    029 032 033 035 047 062 068 073 104 105 143 145 174 181 184 197 201 215
    263 detect-zeroes-registered-buf regression-vhdx-log"
generic_iotests() {
    local log=$BUILD/generic-iotests.log
    # shellcheck disable=SC2086 # a list of test names
    iotests_of "$QEMU_BUILD" "$log" -- -s3chain $GENERIC_IOTESTS &&
        grep -q "^Passed all $(echo $GENERIC_IOTESTS | wc -w) iotests" "$log"
}

# The command's tests named after "--", against the server whose env
# file is $1, with the VAR=VALUE settings between
command_tests_of() {
    local server_env=$1 settings=()
    shift
    while [ "$1" != -- ]; do
        settings+=("$1")
        shift
    done
    shift
    (
        cd "$REPO/tests/orchestrator" &&
        env S3CHAIN_TEST_ENV="$server_env" S3CHAIN_BUILD="$BUILD" \
            S3CHAIN_STOCK_QEMU=/usr/bin/qemu-system-x86_64 "${settings[@]}" \
            "$QEMU_BUILD/pyvenv/bin/python3" -W ignore::ResourceWarning \
            -m unittest -v "$@"
    )
}

# The command's tests take two thirds of the run, and one stream of them
# keeps the two cores of the machine half idle (measured: a third idle,
# the rest mostly waiting on the bucket and on TCG guests), so they run
# as two streams, each on a radosgw of its own: a test that stops or
# freezes its server must not fail the other stream's.  The second
# server, on ports of its own:
second_server() {
    env S3CHAIN_S3_DIR=/tmp/s3chain-s3b S3CHAIN_S3_PORT=7490 \
        S3CHAIN_S3_TLS_PORT=7453 "S3CHAIN_S3_MON_PORTS=3310 6799" \
        "$REPO/scripts/s3-server.sh" "$@"
}

# memstore's accounting of what the OSD holds drifts with every write and
# delete: a whole run on one server once saw the OSD "full" (a failsafe
# at 1677721600 %) while it held a few objects, so the KubeVirt tests get
# a server of their own, started anew
second_stream() {
    local server status=0
    server=$(second_server start) || return 1
    command_tests_of "$server" -- test_backup test_libvirt test_tls \
        test_catalog test_endpoints || status=1
    second_server stop
    server=$(second_server start) || return 1
    command_tests_of "$server" -- test_kubevirt test_manifests || status=1
    second_server stop
    return $status
}

# The second stream runs in the background, its output in a log that the
# step shows when it is over
second_stream_log=$BUILD/command-tests-second-stream.log
start_second_stream() {
    (
        start=$SECONDS
        second_stream >"$second_stream_log" 2>&1
        status=$?
        echo "(the second stream took $((SECONDS - start)) s)" \
            >>"$second_stream_log"
        exit $status
    ) &
    second_stream_pid=$!
}

second_stream_result() {
    wait "$second_stream_pid"
    local status=$?
    cat "$second_stream_log"
    return $status
}

# The first stream, on the first server, started anew afterwards for the
# sanitised tests (see above)
command_tests() {
    local status=0
    command_tests_of "$env_file" -- test_lifecycle test_restore test_load \
        test_lease || status=1
    "$REPO/scripts/s3-server.sh" stop
    env_file=$("$REPO/scripts/s3-server.sh" start) || return 1
    return $status
}

# The second real server: OpenStack Swift with s3api (Debian's 2.30), a
# reduced suite: chains, the bucket stopped, a kill mid-copy, the lease
# taken over without conditional writes, restore of every point (to one
# kind of target: the others do not depend on the server), verify of
# damaged chains, load, deletes and their merges.  (Tests that count
# stderr's lines are not in it: on Swift every run also warns that it
# has no conditional writes.)
SWIFT_TESTS="test_backup.TestChain test_backup.TestFaults.test_radosgw_stopped
    test_backup.TestKilled.test_killed_mid_copy
    test_lease.TestLease.test_taken_over_from_another_host_once_it_ran_out
    test_restore.TestRestore.test_every_point_to_qcow2
    test_restore.TestVerify test_load
    test_lifecycle.TestDelete.test_retried_delete_succeeds_and_says_so"
swift_tests() {
    local swift_env status
    swift_env=$("$REPO/scripts/swift-server.sh" start) || return 1
    # shellcheck disable=SC2086 # a list of test names
    command_tests_of "$swift_env" -- $SWIFT_TESTS
    status=$?
    "$REPO/scripts/swift-server.sh" stop
    return $status
}

# ASan and UBSan: the command (built by the fuzzers' step) and QEMU's
# tools with the driver (build/qemu-sanitised).  Their reports go to
# files, so that a sidecar's, whose exit no test sees, counts too.
sanitiser_reports=$BUILD/sanitiser-reports
sanitiser_options=(
    ASAN_OPTIONS=detect_leaks=1:exitcode=86:log_path=$sanitiser_reports/asan
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1:log_path=$sanitiser_reports/ubsan
    LSAN_OPTIONS=suppressions=$REPO/scripts/lsan-suppressions.txt
)

# Fails when a sanitised process reported anything; shows the first
no_sanitiser_reports() {
    local reports
    reports=$(grep -l -E 'ERROR: (Address|Leak)Sanitizer|runtime error' \
        "$sanitiser_reports"/* 2>/dev/null)
    [ -z "$reports" ] && return 0
    echo "sanitiser reports:" $reports
    cat "$(echo "$reports" | head -1)"
    return 1
}

sanitised_qemu_tests() {
    rm -rf "$sanitiser_reports" && mkdir -p "$sanitiser_reports"
    "$REPO/scripts/build-sanitised.sh" >"$BUILD/build-sanitised.log" 2>&1 || {
        tail -20 "$BUILD/build-sanitised.log"; return 1;
    }
    unit_tests_of "$BUILD/qemu-sanitised" "$BUILD/unit-tests-sanitised.log" \
        "${sanitiser_options[@]}" &&
    iotests_of "$BUILD/qemu-sanitised" "$BUILD/iotests-sanitised.log" \
        "${sanitiser_options[@]}" QEMU_PROG="$QEMU_BUILD/qemu-system-x86_64" \
        -- -g s3chain &&
        no_sanitiser_reports
}

# The tests that drive the command's readers of what others wrote, its
# lease thread and cleanup, and the driver's reads, writes and load,
# everything sanitised: of each kind one or two, as the sanitisers
# slow them down twice or more and the whole run must fit in CI's time
sanitised_command_tests() {
    rm -rf "$sanitiser_reports" && mkdir -p "$sanitiser_reports"
    command_tests_of "$env_file" "${sanitiser_options[@]}" \
        S3CHAIN_BIN="$BUILD/fuzz/s3chain" \
        S3CHAIN_QEMU_BUILD="$BUILD/qemu-sanitised" -- \
        test_catalog test_endpoints test_tls \
        test_lease.TestLease.test_hostile_locks \
        test_lease.TestLease.test_renewed_while_the_backup_works \
        test_restore.TestRestore.test_every_point_to_qcow2 \
        test_restore.TestRestore.test_chain_fetches_only_what_shows \
        test_restore.TestVerify test_restore.TestServe test_restore.TestList \
        test_restore.TestBadInput \
        test_backup.TestKilled.test_killed_mid_copy test_backup.TestBadInput \
        test_lifecycle.TestDelete.test_retried_delete_succeeds_and_says_so \
        test_lifecycle.TestGc test_lifecycle.TestBadInput &&
        no_sanitiser_reports
}

step "unit tests" unit_tests
step "the command's unit tests" meson test -C "$BUILD/orchestrator" \
    --print-errorlogs
step "patches/ up to date" "$REPO/scripts/make-patches.sh" --check
step "patches/ build and pass their unit tests one by one" \
    env S3CHAIN_TEST_ENV="$env_file" python3 "$REPO/scripts/check-series.py" \
    "$QEMU_PRISTINE" "$QEMU_BUILD" "$REPO/patches"
step "checkpatch" checkpatch
step "iotests" iotests
step "QEMU's generic iotests over s3chain" generic_iotests
start_second_stream
step "s3chain command" command_tests
step "s3chain command on Swift" swift_tests
step "s3chain command, second stream" second_stream_result
step "fuzzers" "$REPO/scripts/fuzz.sh" 10
step "unit tests and iotests, sanitised" sanitised_qemu_tests
step "s3chain command, sanitised" sanitised_command_tests

echo
for f in "${failures[@]}"; do
    echo "failed: $f"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
