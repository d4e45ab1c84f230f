#!/usr/bin/env bash
# Installs the Debian packages the tests and tools use, when missing (needs root or sudo).
#   dcmtk: storescu/echoscu/storescp (tests, ingest benchmark); orthanc: the test PACS;
#   libgdcm-tools: gdcminfo; chromium + chromium-driver: dashboard tests;
#   orthanc-dicomweb: Orthanc's DICOMweb plugin (STOW-RS / WADO-RS tests).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
for pair in storescu:dcmtk /usr/sbin/Orthanc:orthanc gdcminfo:libgdcm-tools chromium:chromium chromedriver:chromium-driver \
    /usr/share/orthanc/plugins/libOrthancDicomWeb.so:orthanc-dicomweb; do
  bin=${pair%%:*}; pkg=${pair##*:}
  if [ "${bin#/}" != "$bin" ]; then [ -x "$bin" ] || need+=("$pkg"); else command -v "$bin" >/dev/null 2>&1 || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian's orthanc starts a system service on 4242/8042; the tests run their own instances.
  ($SUDO service orthanc stop || $SUDO systemctl disable --now orthanc || true) >/dev/null 2>&1
fi
