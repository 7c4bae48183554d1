#!/bin/sh
# Fetches the pinned Debian packages ssegate builds against and unpacks them
# under third_party/{include,lib}. Nothing fetched here is committed.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

# name version sha256 (of the .deb, as Debian's archive publishes it)
pins="libbearssl-dev 0.6+dfsg.1-3 0548c56d0931aedbc2a27c43ba48dd81a72f699d39d76078674e7ccb3349167d
libjsmn-dev 1.1.0-2 4117ce4e363f31e1b21d7ab89d6350b5d78374965d4c9fef00a572f6e487c874"

if [ -f include/bearssl.h ] && [ -f include/jsmn.h ] && [ -f lib/libbearssl.a ]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt's sandbox user must be able to write the download directory.
chmod 0777 "$work"

echo "$pins" | while read -r name version sum; do
    deb=$(ls "$work"/"${name}"_*.deb 2>/dev/null || true)
    if [ -z "$deb" ]; then
        if ! (cd "$work" && apt-get download -q "$name=$version" >/dev/null 2>&1); then
            # A fresh machine has no package lists yet.
            apt-get update -q >/dev/null
            (cd "$work" && apt-get download -q "$name=$version" >/dev/null)
        fi
        deb=$(ls "$work"/"${name}"_*.deb)
    fi
    got=$(sha256sum "$deb" | cut -d' ' -f1)
    if [ "$got" != "$sum" ]; then
        echo "third_party: $name: sha256 $got, expected $sum" >&2
        exit 1
    fi
    dpkg-deb -x "$deb" "$work/unpacked"
done

mkdir -p include lib
cp -R "$work"/unpacked/usr/include/. include/
cp "$work"/unpacked/usr/lib/*/libbearssl.a lib/
echo "third_party: libbearssl-dev and libjsmn-dev unpacked"
