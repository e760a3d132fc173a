#!/usr/bin/env bash
# Builds a Weir image without pulling anything: FROM scratch, holding the weir-broker and weir
# binaries built on this host plus exactly the shared libraries they load (found with ldd,
# the dynamic loader included), a passwd entry for the unprivileged user and an empty data
# directory. For machines with a Docker engine but no registry (the tests use it); elsewhere
# deploy/docker/Dockerfile builds the image from source.
#
# Usage: deploy/docker/build-local-image.sh [TAG]          (default tag: weir:local)
# Environment:
#   WEIR_BROKER_BIN, WEIR_CLI_BIN  binaries to package [default: target/release/weir-broker,
#                                  target/release/weir; build them first with
#                                  cargo build --release -p weir-broker -p weir-cli]
#   WEIR_IMAGE_STRIP=0             keep debug symbols (default: strip the copies, the host's
#                                  binaries are left as they are)
set -euo pipefail

tag=${1:-weir:local}
repo=$(cd "$(dirname "$0")/../.." && pwd)
broker=${WEIR_BROKER_BIN:-$repo/target/release/weir-broker}
cli=${WEIR_CLI_BIN:-$repo/target/release/weir}
for bin in "$broker" "$cli"; do
    if [[ ! -x $bin ]]; then
        echo "build-local-image: $bin is missing; run: cargo build --release -p weir-broker -p weir-cli" >&2
        exit 1
    fi
done

context=$(mktemp -d "${TMPDIR:-/tmp}/weir-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
root=$context/rootfs
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$context/data"
chmod 1777 "$root/tmp"

install -m 0755 "$broker" "$root/usr/local/bin/weir-broker"
install -m 0755 "$cli" "$root/usr/local/bin/weir"
if [[ ${WEIR_IMAGE_STRIP:-1} != 0 ]] && command -v strip >/dev/null; then
    strip --strip-debug "$root/usr/local/bin/weir-broker" "$root/usr/local/bin/weir"
fi

# Every library either binary loads, at the path ldd resolved it to, plus the loader itself
# (the absolute path ldd prints without "=>"). vdso has no file.
libraries=$(ldd "$broker" "$cli" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3 }
    $1 ~ /^\// && $1 !~ /:$/ { print $1 }' | sort -u)
if [[ -z $libraries ]]; then
    echo "build-local-image: ldd found no libraries (a static binary needs none)" >&2
fi
for library in $libraries; do
    mkdir -p "$root$(dirname "$library")"
    # -L: copy what a symlink points to, under the name the binary asks for.
    cp -L "$library" "$root$library"
done
# The loader is looked up at the path compiled into the binary (PT_INTERP), e.g.
# /lib64/ld-linux-x86-64.so.2; ldd printed it above. glibc reads nsswitch.conf for name
# service (files and dns are built into libc.so.6 since glibc 2.34): compose service names and
# Kubernetes DNS names resolve through the /etc/hosts and /etc/resolv.conf the runtime mounts.
printf 'root:x:0:0:root:/:/sbin/nologin\nweir:x:10001:10001:weir:/var/lib/weir:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nweir:x:10001:\n' >"$root/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$root/etc/nsswitch.conf"

cp "$repo/deploy/docker/Dockerfile.local" "$context/Dockerfile"
docker build --quiet --tag "$tag" "$context" >/dev/null
echo "built $tag from $broker and $cli ($(echo "$libraries" | wc -w) shared libraries)"
