#!/usr/bin/env bash
# Install what Openloop needs on a fresh Debian machine: bubblewrap, debootstrap, slirp4netns
# and e2fsprogs for devboxes, git for deployments from git URLs, and uv for Python environments.
# Idempotent: installs only what is missing.
set -euo pipefail

need_apt=()
command -v bwrap >/dev/null || need_apt+=(bubblewrap)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v slirp4netns >/dev/null || need_apt+=(slirp4netns)
command -v nft >/dev/null || need_apt+=(nftables)
command -v mkfs.ext4 >/dev/null || need_apt+=(e2fsprogs)
command -v git >/dev/null || need_apt+=(git)
command -v curl >/dev/null || need_apt+=(curl)
[ -x /usr/bin/python3 ] || need_apt+=(python3)
if [ "${OPENLOOP_WITH_POSTGRES:-0}" = 1 ] && ! command -v pg_ctlcluster >/dev/null; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing apt packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# uv: a real binary on PATH (not a pyenv shim), installed from PyPI.
if ! [ -x /usr/local/bin/uv ]; then
  echo "installing uv from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check uv 2>/dev/null \
    || /usr/bin/python3 -m pip install --quiet --break-system-packages uv
  uv_bin=$(python3 -c 'import uv; print(uv.find_uv_bin())')
  ln -sf "$uv_bin" /usr/local/bin/uv
fi
/usr/local/bin/uv --version >/dev/null
