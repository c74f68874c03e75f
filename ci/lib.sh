# Shared by ci/test and ci/dev. Sourced, not run.

# Swift lives in /opt/swift on our machines; make sure it is on PATH.
if ! command -v swift >/dev/null 2>&1 && [ -x /opt/swift/usr/bin/swift ]; then
  export PATH="/opt/swift/usr/bin:$PATH"
fi

# The Debian packages kmsd needs to build and test.
KMSD_PACKAGES=(softhsm2 libp11-kit-dev libsqlite3-dev opensc openssl curl postgresql)

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

# A virtualenv with the conformance suites' requirements (hvac, PyKMIP, pytest), kept in .build-venv/ between runs.
# Prints the path of its python.
conformance_venv() {
  local venv="$PWD/.build-venv"
  # hvac for the transit suites, PyKMIP for the KMIP suite.
  local requirements=(vault-dev/conformance/requirements.txt Tests/KMIPConformance/requirements.txt)
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >&2 2>/dev/null || {
      ensure_packages python3-venv >&2
      python3 -m venv "$venv" >&2
    }
  fi
  if ! cat "${requirements[@]}" | cmp -s - "$venv/.requirements" 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check "${requirements[@]/#/-r}" >&2 || return 1
    cat "${requirements[@]}" >"$venv/.requirements"
  fi
  echo "$venv/bin/python"
}

# Starts the built vault-dev on a free loopback port with its state under $1; prints VAULT_ADDR=… VAULT_TOKEN=…
# VAULT_UNSEAL_KEY=… on one line, for `env`.
start_vault_dev() {
  local dir="$1"
  mkdir -p "$dir"
  "$(swift build --show-bin-path)/vault-dev" --port 0 --state-file "$dir/state.json" >"$dir/env" 2>"$dir/log" &
  echo $! >"$dir/pid"
  for _ in $(seq 1 100); do grep -q '^VAULT_UNSEAL_KEY=' "$dir/env" 2>/dev/null && break; sleep 0.1; done
  grep -q '^VAULT_UNSEAL_KEY=' "$dir/env" || { echo "vault-dev did not start:" >&2; cat "$dir/log" >&2; return 1; }
  tr '\n' ' ' <"$dir/env"
}

stop_vault_dev() {
  [ -f "$1/pid" ] && kill "$(cat "$1/pid")" 2>/dev/null || true
}

# pytest's summary counts in LOG: `pytest_count LOG passed` prints the passes, `pytest_count LOG failed` the failures
# and errors (0 when none).
pytest_count() {
  local pattern='[0-9]+ passed'
  [ "$2" = failed ] && pattern='[0-9]+ (failed|errors?)'
  (tail -3 "$1" | grep -aoE "$pattern" || true) | awk '{ sum += $1 } END { print sum + 0 }'
}

# A fresh SoftHSM token labelled $2 in the directory of `kmsd dev-init` $1 (its hsm-pin and hsm-so-pin files), under
# the SOFTHSM2_CONF in force.
init_dev_token() {
  softhsm2-util --init-token --free --label "$2" --pin "$(cat "$1/hsm-pin")" --so-pin "$(cat "$1/hsm-so-pin")" >/dev/null
}
