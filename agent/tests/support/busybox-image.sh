#!/bin/sh
# Builds the docker image caravan-test/busybox:latest without a registry:
# a static busybox in a tiny rootfs, imported with `docker import`.
# Needs a static busybox: `apt-get install -y busybox-static` (/bin/busybox).
set -eu
IMAGE="${1:-caravan-test/busybox:latest}"
BUSYBOX="${BUSYBOX:-/bin/busybox}"
if ! file_info=$("$BUSYBOX" --help 2>&1 | head -1); then
    echo "busybox-image.sh: no busybox at $BUSYBOX (apt-get install busybox-static)" >&2
    exit 1
fi
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" 2>&1 | grep -q '=>'; then
    echo "busybox-image.sh: $BUSYBOX is dynamically linked; install busybox-static" >&2
    exit 1
fi
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
mkdir -p "$ROOT/bin" "$ROOT/tmp" "$ROOT/etc" "$ROOT/alloc" "$ROOT/local" "$ROOT/secrets"
cp "$BUSYBOX" "$ROOT/bin/busybox"
for applet in $("$ROOT/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
echo 'root:x:0:0:root:/:/bin/sh' > "$ROOT/etc/passwd"
echo 'nobody:x:65534:65534:nobody:/:/bin/sh' >> "$ROOT/etc/passwd"
echo 'root:x:0:' > "$ROOT/etc/group"
tar -C "$ROOT" -c . | docker import --change 'ENV PATH=/bin' --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
echo "built $IMAGE ($file_info)"
