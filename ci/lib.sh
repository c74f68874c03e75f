# Shared by ci/test and ci/dev. Sourced, not run.

# Swift lives in /opt/swift on our machines; make sure it is on PATH.
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
  export PATH="/opt/swift/usr/bin:$PATH"
fi

# The Debian packages kmsd needs to build and test.
KMSD_PACKAGES=(softhsm2 libp11-kit-dev libsqlite3-dev opensc)

# Installs whichever of the given Debian packages is missing (as root, or through sudo).
ensure_packages() {
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

require_swift() {
  if ! command -v swift >/dev/null 2>&1; then
    echo "error: a Swift 6 toolchain is required (swift not found on PATH or in /opt/swift)" >&2
    exit 1
  fi
}
