#!/usr/bin/env bash
# Validates docker/compose.yaml with Docker Compose v2 (`compose config`); no Docker engine needed.
#
#   docker/check-compose.sh            # from anywhere; exit 0 when every check passes, 1 otherwise
#
# Compose: `docker compose` when that works, else a v2 `docker-compose` on PATH, else Debian's build of
# docker/compose v2 (package docker-compose 2.26.1-4 from Debian 13 "trixie", a static Go binary) unpacked
# into a temporary directory: no root, nothing installed system-wide. Set COMPOSE_CACHE_DIR to keep the
# unpacked binary between runs (e.g. a CI cache). Needs curl or apt-get, and dpkg-deb or ar + tar.
#
# Checks:
#   1. with docker/.env.example, all profiles: valid, and not one warning (no unset variable);
#   2. with no env file at all and POSTGRES_PASSWORD unset: refused, naming POSTGRES_PASSWORD (the one
#      required variable, on purpose: there is no default password);
#   3. with no env file but POSTGRES_PASSWORD set: valid without warnings (every other variable has a default).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
compose_file="$here/compose.yaml"
env_example="$here/.env.example"

# Debian 13 (trixie) amd64 package; the SHA-256 is the one in trixie's signed package index.
deb_version="2.26.1-4"
deb_url="http://deb.debian.org/debian/pool/main/d/docker-compose/docker-compose_${deb_version}_amd64.deb"
deb_sha256="47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say() { printf '%s\n' "$*" >&2; }

is_v2() {  # "$@": a compose command; true when it reports version 2.x or later
    local out
    out="$("$@" version --short 2>/dev/null)" || return 1
    out="${out#v}"
    [[ "${out%%.*}" =~ ^[0-9]+$ ]] && (( ${out%%.*} >= 2 ))
}

unpack_deb() {  # $1: .deb, $2: directory to extract into
    if command -v dpkg-deb >/dev/null 2>&1; then
        dpkg-deb -x "$1" "$2"
    elif command -v ar >/dev/null 2>&1; then
        (cd "$2" && ar x "$1" && tar -xf data.tar.* && rm -f data.tar.* control.tar.* debian-binary)
    else
        say "need dpkg-deb or ar (binutils) to unpack $1"; return 1
    fi
}

fetch_deb() {  # $1: target file. The pinned file first; when Debian has replaced it, apt's current one.
    if command -v curl >/dev/null 2>&1 && curl -fsSL --retry 2 -o "$1" "$deb_url"; then
        if echo "$deb_sha256  $1" | sha256sum -c --status; then return 0; fi
        say "checksum mismatch for $deb_url"; rm -f "$1"; return 1
    fi
    command -v apt-get >/dev/null 2>&1 || { say "cannot download $deb_url and no apt-get"; return 1; }
    say "pinned package not downloadable; asking apt (private state, signature-checked) for trixie's current one"
    local apt="$work/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        > "$apt/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o "Dir::Etc::sourceparts=/nonexistent"
                -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o "Debug::NoLocking=1"
                -o "APT::Sandbox::User=$(id -un)")
    apt-get "${opts[@]}" -qq update
    (cd "$apt" && apt-get "${opts[@]}" -qq download docker-compose)
    mv "$apt"/docker-compose_*.deb "$1"
}

find_compose() {  # sets the array COMPOSE
    if command -v docker >/dev/null 2>&1 && is_v2 docker compose; then COMPOSE=(docker compose); return; fi
    if command -v docker-compose >/dev/null 2>&1 && is_v2 docker-compose; then COMPOSE=(docker-compose); return; fi
    local dir="${COMPOSE_CACHE_DIR:-$work/compose}"
    local bin="$dir/docker-compose"
    if [[ ! -x "$bin" ]] || ! is_v2 "$bin"; then
        [[ "$(uname -m)" == x86_64 ]] || { say "no Compose v2 here and the fallback is amd64-only"; return 1; }
        say "no Compose v2 found: fetching Debian's docker-compose $deb_version into $dir"
        mkdir -p "$dir" "$work/deb"
        fetch_deb "$work/compose.deb"
        unpack_deb "$work/compose.deb" "$work/deb"
        install -m 0755 "$work/deb/usr/libexec/docker/cli-plugins/docker-compose" "$bin"
    fi
    is_v2 "$bin" || { say "$bin is not Compose v2"; return 1; }
    COMPOSE=("$bin")
}

find_compose
say "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short))"

# A clean environment: variables from the caller's shell (SPEC, POSTGRES_PASSWORD, ...) must not hide a
# missing default. HOME stays (MODELS_DIR defaults under it); DOCKER_CONFIG stays when set.
clean=(env -i "PATH=$PATH" "HOME=${HOME:-/nonexistent}")
[[ -n "${DOCKER_CONFIG:-}" ]] && clean+=("DOCKER_CONFIG=$DOCKER_CONFIG")
profiles=(--profile workers --profile tools)
failed=0

run() {  # "$@": the command; stdout and stderr go to $work/out and $work/err; returns its status
    "$@" >"$work/out" 2>"$work/err"
}

# 1. The example env file: valid, silent.
if run "${clean[@]}" "${COMPOSE[@]}" -f "$compose_file" --env-file "$env_example" "${profiles[@]}" config -q \
        && [[ ! -s "$work/err" ]]; then
    say "ok   1. config with .env.example: valid, no warnings"
else
    say "FAIL 1. config with .env.example:"; cat "$work/err" >&2; failed=1
fi

# 2. No env file, no password: an explicit error naming POSTGRES_PASSWORD.
if run "${clean[@]}" "${COMPOSE[@]}" -f "$compose_file" --env-file /dev/null "${profiles[@]}" config -q; then
    say "FAIL 2. config without POSTGRES_PASSWORD was accepted (it must be required)"; failed=1
elif grep -q "POSTGRES_PASSWORD" "$work/err"; then
    say "ok   2. config without POSTGRES_PASSWORD refused: $(head -n1 "$work/err")"
else
    say "FAIL 2. config without POSTGRES_PASSWORD failed for another reason:"; cat "$work/err" >&2; failed=1
fi

# 3. No env file, password only: every other variable has a default.
if run "${clean[@]}" POSTGRES_PASSWORD=placeholder \
        "${COMPOSE[@]}" -f "$compose_file" --env-file /dev/null "${profiles[@]}" config -q \
        && [[ ! -s "$work/err" ]]; then
    say "ok   3. config with only POSTGRES_PASSWORD set: valid, no warnings"
else
    say "FAIL 3. config with only POSTGRES_PASSWORD set:"; cat "$work/err" >&2; failed=1
fi

exit "$failed"
