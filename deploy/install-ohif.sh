#!/usr/bin/env bash
# Installs the prebuilt OHIF viewer (npm package @ohif/app, its dist/ folder) for the viewer test
# tests/e2e/test_ohif.py. Pinned version and tarball digest; idempotent; nothing outside DEST.
#   usage: deploy/install-ohif.sh [DEST]     (default .work/ohif/<version>, git-ignored)
# Needs node + npm and the npm registry. Only the static build is unpacked (no node_modules);
# the ONNX runtime (ort/) and the microscopy viewer, unused for MR + SEG, are left out (~156 MB).
set -euo pipefail
VERSION=3.13.2
INTEGRITY=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
cd "$(dirname "$0")/.."
DEST=${1:-.work/ohif/$VERSION}
STAMP="$DEST/.installed-$VERSION"
if [ -f "$STAMP" ] && [ -f "$DEST/dist/index.html" ]; then
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "install-ohif: npm not found (install node >= 20 and npm)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "installing @ohif/app@$VERSION (prebuilt viewer) into $DEST"
(cd "$tmp" && npm pack --silent "@ohif/app@$VERSION" >/dev/null)
tgz="$tmp/ohif-app-$VERSION.tgz"
got="sha512-$(node -e 'const c=require("crypto"),f=require("fs");process.stdout.write(c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$tgz")"
if [ "$got" != "$INTEGRITY" ]; then
  echo "install-ohif: digest mismatch for @ohif/app@$VERSION: got $got, pinned $INTEGRITY" >&2
  exit 1
fi
rm -rf "$DEST"
mkdir -p "$DEST"
tar xzf "$tgz" -C "$DEST" --strip-components=1 --exclude=package/dist/ort --exclude=package/dist/dicom-microscopy-viewer \
  package/dist package/LICENSE package/package.json
touch "$STAMP"
