# Setup shared by the benchmarks; sourced with BENCH set to their name.
# Starts the local S3 server, loads its env file, makes a work directory
# with the secret in a 0600 file, and cleans both up on exit.
#
# SPDX-License-Identifier: GPL-2.0-or-later
# shellcheck shell=bash
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"

env_file=$("$REPO/scripts/s3-server.sh" start)
# shellcheck disable=SC1090
. "$env_file"
img=$QEMU_BUILD/qemu-img
work=$(mktemp -d /var/tmp/s3chain-bench.XXXXXX)
prefix=bench/$BENCH-$$
trap 'rm -rf "$work"; python3 "$REPO/scripts/s3obj.py" "$env_file" rm-prefix "$prefix/" || true' EXIT
( umask 077; printf '%s' "$AWS_SECRET_ACCESS_KEY" >"$work/secret" )
host=${S3CHAIN_ENDPOINT#*://}
url_base="s3chain://$host;tls=off;access-key-id=$AWS_ACCESS_KEY_ID;key-secret=s3key"

# With S3CHAIN_BENCH_BEFORE, the qemu-img of another build (the commit
# before a change, copied aside before rebuilding), every s3chain variant
# also runs with it, in the same rotation, labelled "(before)"
before_img=${S3CHAIN_BENCH_BEFORE:-}
add_before_variants() {
    local v label more=()
    [ -n "$before_img" ] || return 0
    for v in "${variants[@]}"; do
        label=${v%%|*}
        case $label in baseline*) continue ;; esac
        more+=("$label (before)|${v#*|}")
    done
    variants+=("${more[@]}")
}
# The qemu-img that variant $1 runs
img_of() {
    case $1 in
    *"(before)") echo "$before_img" ;;
    *) echo "$img" ;;
    esac
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f\n", b - a }'; }
median() { sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# The median of the seconds the caller's "times" holds for variant $1
median_time() { echo "${times[$1]}" | tr ' ' '\n' | grep . | median; }

# A table row for each of the caller's "variants" (LABEL|...): median
# seconds, MB/s for $1 bytes, and the ratio to the baseline's $2 seconds
variant_rows() {
    local bytes=$1 base=$2 v label t
    for v in "${variants[@]}"; do
        IFS='|' read -r label _ _ <<<"$v"
        t=$(median_time "$label")
        printf '%-44s %8s %8.0f %8.2f\n' "$label" "$t" \
            "$(awk -v b="$bytes" -v t="$t" 'BEGIN { print b / t / 1e6 }')" \
            "$(awk -v b="$base" -v t="$t" 'BEGIN { print b / t }')"
    done
}
