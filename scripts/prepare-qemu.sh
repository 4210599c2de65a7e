#!/bin/bash
# Makes build/qemu-src: the pinned QEMU source with patches/ applied, and
# our driver and test files linked in, so that editing them needs no new
# tree and no reconfigure.  The tree is made anew when patches/ changes.
#
# SPDX-License-Identifier: GPL-2.0-or-later
set -euo pipefail
. "$(dirname "$0")/common.sh"

"$REPO/scripts/fetch-qemu.sh" "$QEMU_PRISTINE"

stamp=$(cat "$REPO"/patches/*.patch | sha256sum | cut -d' ' -f1)
if [ ! -d "$QEMU_SRC/.git" ]; then
    git clone -q "$QEMU_PRISTINE" "$QEMU_SRC"
    # The "+ds" tarball has no firmware; a softmmu build still unpacks
    # edk2 images whenever bzip2 is installed.  Empty ones do: no test
    # boots UEFI.
    sed -n "s/^ *'\(edk2-[a-z0-9_-]*\.fd\)',$/\1/p" "$QEMU_SRC/pc-bios/meson.build" |
        while read -r fd; do
            bzip2 -c </dev/null >"$QEMU_SRC/pc-bios/$fd.bz2"
        done
fi
if [ "$(cat "$QEMU_SRC/.s3chain-patches" 2>/dev/null)" != "$stamp" ]; then
    # Only the files the series touches are rewritten, so a changed
    # series costs a partial rebuild, not a full one.
    (
        cd "$QEMU_SRC"
        git_identity
        git am --abort >/dev/null 2>&1 || true
        # our links would stand in the way of the files the series adds
        find . -path ./.git -prune -o -type l -lname "$REPO/*" -print |
            xargs -r rm -f
        git reset -q --hard v10.0.2
        git am -q $(ls "$REPO"/patches/*.patch | grep -v /0000-)
    )
    echo "$stamp" >"$QEMU_SRC/.s3chain-patches"
fi

# Links to files of ours that are gone
find "$QEMU_SRC" -path "$QEMU_SRC/.git" -prune -o -type l -lname "$REPO/*" \
    ! -exec test -e {} \; -print | xargs -r rm -f
for f in $(our_qemu_files); do
    mkdir -p "$(dirname "$QEMU_SRC/$f")"
    if [ "$(readlink "$QEMU_SRC/$f")" != "$REPO/$f" ]; then
        rm -rf "${QEMU_SRC:?}/$f"
        ln -s "$REPO/$f" "$QEMU_SRC/$f"
    fi
done
