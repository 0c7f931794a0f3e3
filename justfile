# jobworker's recipes. On a fresh machine run them through ./dev, which installs `just` first.
set shell := ["bash", "-euo", "pipefail", "-c"]
# Recipe arguments reach the commands as "$@", one word each, so `./dev pytest -m "not slow"` keeps its quotes.
set positional-arguments := true

venv := justfile_directory() / ".venv/bin"
export PATH := venv + ":" + env_var("PATH")

addr := env_var_or_default("JWS_ADDR", "127.0.0.1:50051")
tls_dir := justfile_directory() / "certs/dev"

# list the recipes
default:
    @just --list

# start jwsd in the foreground as root, with dev certificates and users (made when missing);
# `jws` is linked into /usr/local/bin when that is free, so that any shell finds it
run *ARGS: _dev-certs _jws-on-path
    jwsd --addr {{addr}} --tls-dir "{{tls_dir}}" --users "{{tls_dir}}/users.toml" "$@"

# the system tests (systemd unit, container) as root on a throwaway machine with systemd and podman
system-test *ARGS:
    pytest -m system tests/system --timeout 3600 -o faulthandler_timeout=3600 "$@"

# lint, type-check and run every test (the README's test command; CI runs it as root)
test *ARGS: lint typecheck
    pytest "$@"

# only the test suite, without lint and typecheck
pytest *ARGS:
    pytest "$@"

# end-to-end tests through the real jwsd and jws processes
e2e *ARGS:
    pytest tests/e2e "$@"

# ruff check and format check
lint:
    ruff check .
    ruff format --check .

# mypy strict on the package
typecheck:
    mypy

# regenerate the committed gRPC code from protos/
protos:
    python -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --purerpc_out=. protos/jobworker/v1/jobworker.proto protos/jobworker/v1/health.proto

# generate dev certificates: just certs [OUTDIR] [USER...]
certs outdir=tls_dir *USERS:
    certs/gen-certs.sh {{outdir}} {{USERS}}

# The dev users: alex and betty are users, admin an admin (who sees and stops every job).
# Under `sudo ./dev run` the files go to the user who ran sudo: their `jws` reads the keys.
_dev-certs:
    #!/usr/bin/env bash
    set -euo pipefail
    dir="{{tls_dir}}"
    [ -f "$dir/server_cert.pem" ] || certs/gen-certs.sh "$dir"
    [ -f "$dir/users.toml" ] || printf '%s\n' '# the dev users (./dev run): jwsd --users' \
        '[users]' 'alex = "user"' 'betty = "user"' 'admin = "admin"' > "$dir/users.toml"
    if [ "$(id -u)" = 0 ] && [ -n "${SUDO_UID:-}" ]; then
        chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$dir"
    fi

# `jws` on PATH for a new shell: a link in /usr/local/bin (as root, where no other jws is)
_jws-on-path:
    #!/usr/bin/env bash
    set -euo pipefail
    link=/usr/local/bin/jws
    if [ "$(id -u)" != 0 ] || [ ! -d /usr/local/bin ]; then
        echo "dev: jws is {{venv}}/jws (put {{venv}} on PATH)" >&2
    elif [ ! -e "$link" ] || [[ "$(readlink "$link" || true)" == */.venv/bin/jws ]]; then
        ln -sfn "{{venv}}/jws" "$link"
        echo "dev: jws is $link (-> {{venv}}/jws)" >&2
    else
        echo "dev: jws is {{venv}}/jws; $link is another program's: put {{venv}} first on PATH" >&2
    fi

# benchmarks against peers, in the same run (under 10 minutes)
bench *ARGS:
    python -m tests.bench "$@"

# the same rows with small sizes (under 1 minute)
bench-quick *ARGS:
    python -m tests.bench --quick "$@"

# everything: lint, typecheck, tests, quick benchmarks
check: test bench-quick
