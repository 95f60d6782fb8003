#!/usr/bin/env bash
# Run a local OpenAI-compatible LLM server (llama.cpp's llama-server, in-process through the
# `xllamacpp` wheel from PyPI) with SmolLM2-135M-Instruct, for agentd's tests and development.
#
#   scripts/local-llm.sh start [--port P]   start in the background (idempotent), wait until
#                                           healthy, print the base URL http://127.0.0.1:P/v1
#                                           on stdout (and nothing else there)
#   scripts/local-llm.sh stop [--port P]    stop the server started by `start` (idempotent)
#   scripts/local-llm.sh status [--port P]  exit 0 if a server answers /health with 200 on P
#   scripts/local-llm.sh run [--port P]     run in the foreground, log to the terminal (debugging)
#   scripts/local-llm.sh --help
#
# The port defaults to $AGENTD_LLM_PORT, else 8088. The server binds 127.0.0.1 only.
# Served model name: the server reports the alias "smollm2" in /v1/models (id "smollm2");
# requests may send any "model" value (llama-server serves its one model whatever the name),
# but send "smollm2" to be explicit.
#
# Context: llama-server splits its total context evenly across its parallel slots. The defaults
# give 2 slots of 8192 tokens each (SmolLM2's training context), i.e. a total of 16384 tokens.
# A request whose prompt does not fit in one slot fails with HTTP 400
# (error.type "exceed_context_size_error").
#
# Environment:
#   AGENTD_MODELS_DIR    models dir (default <repo>/.models); holds llm/ (the GGUF), venv/ (Python
#                        venv with xllamacpp) and run/ (llm-<port>.pid, llm-<port>.log, launcher)
#   AGENTD_WHEEL_CACHE   wheel cache shared with fetch-models.sh (default ~/.cache/agentd/wheels)
#   AGENTD_LLM_PORT      default port (8088)
#   AGENTD_LLM_PARALLEL  parallel slots (default 2)
#   AGENTD_LLM_SLOT_CTX  context tokens per slot (default 8192)
#   AGENTD_LLM_THREADS   CPU threads (default 2)
#   AGENTD_LLM_TIMEOUT   seconds to wait for /health (default 60)
#   PYTHON               Python 3.10+ used to create the venv (default python3)
set -euo pipefail

XLLAMACPP_VERSION=2026.10.11549
MODEL_FILE=SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_ALIAS=smollm2

usage() {
    sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    echo "local-llm.sh: $*" >&2
    exit 1
}

log() {
    echo "local-llm.sh: $*" >&2
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    start | stop | status | run) ;;
    -h | --help | help) usage; exit 0 ;;
    "") usage >&2; exit 2 ;;
    *) echo "local-llm.sh: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac

port="${AGENTD_LLM_PORT:-8088}"
while [ $# -gt 0 ]; do
    case "$1" in
        --port) [ $# -ge 2 ] || die "--port needs a value"; port="$2"; shift 2 ;;
        --port=*) port="${1#--port=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "local-llm.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$port" in
    '' | *[!0-9]*) die "invalid port '$port'" ;;
esac
if [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
    die "invalid port '$port'"
fi

parallel="${AGENTD_LLM_PARALLEL:-2}"
slot_ctx="${AGENTD_LLM_SLOT_CTX:-8192}"
threads="${AGENTD_LLM_THREADS:-2}"
timeout="${AGENTD_LLM_TIMEOUT:-60}"
for v in parallel slot_ctx threads timeout; do
    case "${!v}" in
        '' | *[!0-9]* | 0) die "$v must be a positive integer, got '${!v}'" ;;
    esac
done

script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
models_dir="${AGENTD_MODELS_DIR:-$repo_root/.models}"
cache_dir="${AGENTD_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentd/wheels}"
python="${PYTHON:-python3}"

host=127.0.0.1
base_url="http://$host:$port/v1"
health_url="http://$host:$port/health"

command -v "$python" >/dev/null 2>&1 || die "'$python' not found; install Python 3.10+ (or set PYTHON=...)"

mkdir -p "$models_dir"
models_dir="$(cd "$models_dir" && pwd)"
model_path="$models_dir/llm/$MODEL_FILE"
venv_dir="$models_dir/venv"
venv_python="$venv_dir/bin/python"
run_dir="$models_dir/run"
pid_file="$run_dir/llm-$port.pid"
log_file="$run_dir/llm-$port.log"
launcher="$run_dir/llm_server.py"

# healthy: true when GET /health answers 200 within 2 s.
healthy() {
    "$python" - "$health_url" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
PY
}

# our_pid: print the pid from the pid file if that process is alive and is our launcher for this
# port (guards against a stale pid file whose pid was reused).
our_pid() {
    local pid
    [ -f "$pid_file" ] || return 1
    pid="$(cat "$pid_file" 2>/dev/null || true)"
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    kill -0 "$pid" 2>/dev/null || return 1
    if [ -r "/proc/$pid/cmdline" ]; then
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "llm_server.py .*--port $port\b" || return 1
    fi
    printf '%s\n' "$pid"
}

# stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL.
stop_pid() {
    local pid="$1" _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    log "pid $pid did not exit after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
}

# ensure_model: the GGUF file, through fetch-models.sh (its chatter goes to stderr).
ensure_model() {
    if [ ! -s "$model_path" ]; then
        log "fetching the model with scripts/fetch-models.sh --llm"
        AGENTD_MODELS_DIR="$models_dir" bash "$script_dir/fetch-models.sh" --llm >&2
    fi
    [ -s "$model_path" ] || die "model $model_path is missing after fetch-models.sh --llm"
}

# ensure_venv: a venv with xllamacpp==$XLLAMACPP_VERSION; recreated if broken.
ensure_venv() {
    if [ -x "$venv_python" ] && "$venv_python" - "$XLLAMACPP_VERSION" <<'PY' 2>/dev/null; then
import sys
from importlib.metadata import version
sys.exit(0 if version("xllamacpp") == sys.argv[1] else 1)
PY
        return 0
    fi
    "$python" - <<'PY' || die "xllamacpp $XLLAMACPP_VERSION needs Python 3.10+ ('$python' is older; set PYTHON=...)"
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
PY
    if [ ! -x "$venv_python" ] || ! "$venv_python" -c 'import sys' 2>/dev/null; then
        log "creating venv $venv_dir"
        rm -rf "$venv_dir"
        "$python" -m venv "$venv_dir" >&2 ||
            die "could not create a venv with '$python -m venv' (on Debian: apt-get install python3-venv)"
    fi
    mkdir -p "$cache_dir"
    local spec="xllamacpp==$XLLAMACPP_VERSION"
    # Install from the wheel cache when the wheel is there; else download it into the cache first
    # (the wheel has no dependencies).
    if ! "$venv_python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$cache_dir" "$spec" >&2 2>/dev/null; then
        log "downloading $spec from PyPI"
        "$venv_python" -m pip download --quiet --disable-pip-version-check --no-deps \
            --only-binary=:all: --dest "$cache_dir" "$spec" >&2 ||
            die "pip could not download $spec"
        "$venv_python" -m pip install --quiet --disable-pip-version-check --no-index \
            --find-links "$cache_dir" "$spec" >&2 ||
            die "pip could not install $spec into $venv_dir"
    fi
    log "installed $spec into $venv_dir"
}

# write_launcher: the Python program that runs llama-server in-process and stays alive until
# SIGTERM/SIGINT. Rewritten on every start so that it follows this script.
write_launcher() {
    mkdir -p "$run_dir"
    cat >"$launcher.tmp" <<'PY'
"""agentd local LLM launcher (written by scripts/local-llm.sh; do not edit)."""
import argparse
import os
import signal
import sys
import threading

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--alias", required=True)
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--parallel", type=int, required=True)
ap.add_argument("--slot-ctx", type=int, required=True)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--pid-file")
ap.add_argument("--detach", action="store_true")
args = ap.parse_args()

if args.detach:
    # Own session: no controlling terminal, not in the caller's process group (a Ctrl-C in the
    # caller's terminal does not reach us; `stop` does).
    try:
        os.setsid()
    except OSError:
        pass
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

if args.pid_file:
    tmp = args.pid_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % os.getpid())
    os.replace(tmp, args.pid_file)

stop = threading.Event()


def on_signal(signum, frame):
    print("llm_server: signal %d, stopping" % signum, flush=True)
    stop.set()


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)

import xllamacpp  # noqa: E402

p = xllamacpp.CommonParams()
p.model.path = args.model
p.model_alias = {args.alias}
p.hostnames = [args.host]
p.port = args.port
p.n_parallel = args.parallel
p.n_ctx = args.parallel * args.slot_ctx  # llama-server splits n_ctx evenly across the slots
p.kv_unified = False  # fixed per-slot context, so concurrent requests cannot starve each other
p.cpuparams.n_threads = args.threads
p.cpuparams_batch.n_threads = args.threads
p.ui = False
p.cors_origins = "http://%s:%d" % (args.host, args.port)
print(
    "llm_server: xllamacpp %s, model %s (alias %s), http://%s:%d, %d slots x %d ctx, %d threads"
    % (xllamacpp.__version__, args.model, args.alias, args.host, args.port, args.parallel,
       args.slot_ctx, args.threads),
    flush=True,
)
try:
    server = xllamacpp.Server(p)
except Exception as e:  # model load or bind failure
    print("llm_server: failed to start: %s" % e, file=sys.stderr, flush=True)
    sys.exit(1)
print("llm_server: listening on %s" % server.listening_address, flush=True)
while not stop.wait(1.0):
    pass
del server
if args.pid_file:
    try:
        with open(args.pid_file) as f:
            if f.read().strip() == str(os.getpid()):
                os.unlink(args.pid_file)
    except OSError:
        pass
print("llm_server: stopped", flush=True)
PY
    mv -f "$launcher.tmp" "$launcher"
}

launcher_args() {
    printf '%s\n' "$launcher" --model "$model_path" --alias "$MODEL_ALIAS" --host "$host" \
        --port "$port" --parallel "$parallel" --slot-ctx "$slot_ctx" --threads "$threads"
}

do_start() {
    mkdir -p "$run_dir"
    # Serialise concurrent starts on the same port. fd 9 is closed for the server itself below,
    # so the lock is released when this script exits.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$run_dir/llm-$port.lock"
        flock -w 120 9 || die "timed out waiting for another start on port $port"
    fi

    if healthy; then
        printf '%s\n' "$base_url"
        return 0
    fi
    local pid
    if pid="$(our_pid)"; then
        log "server pid $pid on port $port is not healthy; restarting it"
        stop_pid "$pid"
    fi
    rm -f "$pid_file"

    ensure_model
    ensure_venv
    write_launcher

    local -a largs
    mapfile -t largs < <(launcher_args)
    : >"$log_file"
    "$venv_python" "${largs[@]}" --pid-file "$pid_file" --detach \
        </dev/null >>"$log_file" 2>&1 9>&- &
    pid=$!

    local deadline=$((SECONDS + timeout))
    while :; do
        if healthy; then
            break
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            log "the server exited during startup; last lines of $log_file:"
            tail -n 30 "$log_file" >&2 || true
            rm -f "$pid_file"
            exit 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "no healthy server on port $port after ${timeout}s; last lines of $log_file:"
            tail -n 30 "$log_file" >&2 || true
            stop_pid "$pid"
            rm -f "$pid_file"
            exit 1
        fi
        sleep 0.25
    done
    # The launcher writes the pid file itself; make sure it is there even if it raced.
    [ -s "$pid_file" ] || printf '%s\n' "$pid" >"$pid_file"
    log "server pid $pid on port $port (log: $log_file)"
    printf '%s\n' "$base_url"
}

do_stop() {
    local pid
    if pid="$(our_pid)"; then
        log "stopping server pid $pid on port $port"
        stop_pid "$pid"
        if kill -0 "$pid" 2>/dev/null; then
            die "pid $pid is still alive"
        fi
    elif healthy; then
        rm -f "$pid_file"
        die "a server answers on port $port but was not started by this script (no valid $pid_file); not stopping it"
    else
        log "no server running on port $port"
    fi
    rm -f "$pid_file"
}

do_status() {
    local pid=""
    pid="$(our_pid)" || pid=""
    if healthy; then
        echo "healthy: $base_url${pid:+ (pid $pid)}"
        return 0
    fi
    if [ -n "$pid" ]; then
        echo "not healthy: pid $pid is alive but $health_url does not answer 200 (log: $log_file)"
    else
        echo "not running on port $port"
    fi
    return 1
}

do_run() {
    if healthy; then
        die "a server already answers on port $port"
    fi
    ensure_model
    ensure_venv
    write_launcher
    local -a largs
    mapfile -t largs < <(launcher_args)
    log "serving $base_url in the foreground (Ctrl-C to stop)"
    exec "$venv_python" "${largs[@]}"
}

case "$cmd" in
    start) do_start ;;
    stop) do_stop ;;
    status) do_status ;;
    run) do_run ;;
esac
