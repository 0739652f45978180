#!/usr/bin/env bash
# Debian packages pacsai's tests and tools need; installs only what is missing.
set -euo pipefail
need=()
command -v storescu  >/dev/null || need+=(dcmtk)
command -v dciodvfy  >/dev/null || need+=(dicom3tools)
command -v Orthanc   >/dev/null || [ -x /usr/sbin/Orthanc ] || need+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v redis-server >/dev/null || need+=(redis-server)
command -v pg_ctlcluster >/dev/null || need+=(postgresql)
command -v chromium  >/dev/null || need+=(chromium)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v node >/dev/null || need+=(nodejs npm)
command -v openssl >/dev/null || need+=(openssl)
command -v nft >/dev/null || need+=(nftables)   # the multi-host test narrows worker hosts' egress
command -v ip >/dev/null || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${need[*]}"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The orthanc package starts its own service on 4242/8042 where systemd runs; tests use their own.
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
