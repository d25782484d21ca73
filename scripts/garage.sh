#!/usr/bin/env bash
# Single-node Garage (https://garagehq.deuxfleurs.fr) on loopback, for corepost's integration
# tests and benchmarks.
#
# Usage:
#   scripts/garage.sh ensure        install garage if missing (cargo install), print its path
#   scripts/garage.sh start DIR     start (and on first use configure) an instance whose state
#                                   lives in DIR; prints its env lines (also written to DIR/env)
#   scripts/garage.sh stop DIR      stop that instance (idempotent)
#   scripts/garage.sh wipe DIR      stop the instance and delete DIR
#
# DIR holds garage.toml (its presence means "configured": `start` then reuses ports, keys and
# data), instance.sh (ports and S3 credentials), meta/ and data/, garage.log, garage.pid, env
# (S3_* / AWS_* exports) and .initialized (layout, bucket and key set up). Several instances can
# run at once: ports are picked among the free ones. Messages go to stderr; stdout carries only
# the result (garage's path, the env lines). To talk S3 to an instance, source DIR/env and use
# the harness's client: `cargo build --release --example s3tool; target/release/examples/s3tool`.
#
# Environment (optional): GARAGE_BIN (the binary), GARAGE_VERSION (for `ensure`'s cargo install),
# GARAGE_STARTUP_TIMEOUT (seconds, default 60), GARAGE_LOG (the server's RUST_LOG, default
# garage=info). Written against the Garage v2 CLI (tested with 2.5.0).
set -euo pipefail

readonly BUCKET=corepost REGION=garage
readonly STARTUP_TIMEOUT="${GARAGE_STARTUP_TIMEOUT:-60}"
PROG="$(basename -- "${BASH_SOURCE[0]}")"
die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }
usage() { sed -n '5,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
now_ms() { date +%s%3N; }
[[ $STARTUP_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "GARAGE_STARTUP_TIMEOUT must be a positive integer (seconds)"

find_garage() {
	if [[ -n ${GARAGE_BIN:-} ]]; then [[ -x $GARAGE_BIN ]] && echo "$GARAGE_BIN"; return; fi
	command -v garage 2>/dev/null && return
	local c="${CARGO_HOME:-$HOME/.cargo}/bin/garage"
	[[ -x $c ]] && echo "$c"
}

# Prints garage's path; installs it with cargo if needed (serialized by a lock: several test
# binaries may call `start` at once).
ensure_garage() {
	local g cargo
	[[ -z ${GARAGE_BIN:-} || -x $GARAGE_BIN ]] || die "GARAGE_BIN=$GARAGE_BIN is not an executable file"
	g="$(find_garage)" && { echo "$g"; return; }
	cargo="$(command -v cargo || echo "${CARGO_HOME:-$HOME/.cargo}/bin/cargo")"
	[[ -x $cargo ]] || die "garage is not installed and cargo was not found (https://rustup.rs), or set GARAGE_BIN"
	command -v cc >/dev/null && command -v make >/dev/null ||
		die "building garage needs cc and make: apt-get install -y build-essential"
	exec 8>>"${TMPDIR:-/tmp}/corepost-garage-install.lock"
	flock 8
	if ! g="$(find_garage)"; then
		local -a args=(install garage --locked ${GARAGE_VERSION:+--version "$GARAGE_VERSION"})
		log "garage not found; running: cargo ${args[*]} (takes 10+ minutes)"
		"$cargo" "${args[@]}" >&2 || die "cargo install garage failed; see its output above"
		g="$(find_garage)" || die "cargo install garage succeeded but no garage binary was found"
	fi
	exec 8>&-
	echo "$g"
}

# The garage CLI against this instance, ignoring GARAGE_* variables that could point it elsewhere.
g() {
	timeout "${G_TIMEOUT:-60}" env -u GARAGE_RPC_HOST -u GARAGE_CONFIG_FILE -u GARAGE_RPC_SECRET \
		-u GARAGE_RPC_SECRET_FILE -u GARAGE_ADMIN_TOKEN -u GARAGE_ADMIN_TOKEN_FILE \
		-u GARAGE_METRICS_TOKEN -u GARAGE_METRICS_TOKEN_FILE "$GARAGE" -c "$CFG" "$@"
}

set_dir() {
	[[ -n ${1:-} ]] || usage
	case "$1" in *'"'* | *'\'* | *$'\n'*) die "state directory must not contain quotes, backslashes or newlines: $1" ;; esac
	DIR="$(realpath -m -- "$1")"
	[[ $DIR != / ]] || die "refusing to use / as state directory"
	CFG="$DIR/garage.toml" INST="$DIR/instance.sh" PIDFILE="$DIR/garage.pid" LOGFILE="$DIR/garage.log"
}

lock_dir() {
	mkdir -p -- "$DIR"
	exec 9>>"$DIR/.lock"
	flock -w 120 9 || die "timed out waiting for lock $DIR/.lock (another $PROG on the same DIR?)"
}

rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# Three distinct TCP ports on 127.0.0.1 nobody listens on: "s3 rpc admin" (a clash with a
# process that binds one meanwhile is caught at startup and retried).
pick_ports() {
	local -a ports=()
	local p
	while ((${#ports[@]} < 3)); do
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
		[[ " ${ports[*]-} " == *" $p "* ]] && continue
		(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
		ports+=("$p")
	done
	echo "${ports[*]}"
}

# Writes instance.sh (ports; credentials kept if it exists) and garage.toml.
write_config() {
	local s3 rpc admin access="GK$(rand_hex 12)" secret="$(rand_hex 32)"
	read -r s3 rpc admin < <(pick_ports)
	if [[ -f $INST ]]; then
		# shellcheck disable=SC1090
		. "$INST"
		access="$ACCESS_KEY_ID" secret="$SECRET_ACCESS_KEY"
	fi
	mkdir -p -- "$DIR/meta" "$DIR/data"
	(
		umask 077
		printf 'S3_PORT=%s\nRPC_PORT=%s\nADMIN_PORT=%s\nACCESS_KEY_ID=%s\nSECRET_ACCESS_KEY=%s\n' \
			"$s3" "$rpc" "$admin" "$access" "$secret" >"$INST"
		cat >"$CFG" <<EOF
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(rand_hex 32)"

[s3_api]
s3_region = "$REGION"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$(rand_hex 32)"
metrics_token = "$(rand_hex 32)"
EOF
	)
}

load_instance() {
	[[ -f $INST ]] || die "no garage instance in $DIR; run '$PROG start $DIR' first"
	# shellcheck disable=SC1090
	. "$INST"
}

# Is PID a garage server of this DIR's config? (guards against pid reuse)
pid_is_ours() {
	local i
	local -a argv=()
	[[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null || return 1
	mapfile -d '' argv <"/proc/$1/cmdline" 2>/dev/null || return 1
	for ((i = 0; i + 2 < ${#argv[@]}; i++)); do
		[[ ${argv[i]} == -c && ${argv[i + 1]} == "$CFG" && ${argv[i + 2]} == server ]] && return 0
	done
	return 1
}

# Prints the pid of DIR's running server (from the pid file, else by its command line).
running_pid() {
	local p
	p="$(head -n1 "$PIDFILE" 2>/dev/null || true)"
	pid_is_ours "$p" && { echo "$p"; return 0; }
	[[ -f $CFG ]] || return 1
	for p in /proc/[0-9]*; do
		pid_is_ours "${p#/proc/}" && { echo "${p#/proc/}"; return 0; }
	done
	return 1
}

launch_server() {
	: >>"$LOGFILE"
	LOG_OFFSET="$(wc -c <"$LOGFILE")"  # this run's part of the log, for port conflicts
	echo "==== $(date -u +%FT%TZ) $PROG: starting garage server ====" >>"$LOGFILE"
	rm -f -- "$PIDFILE"
	# The inner shell records its pid and execs garage; our lock fds must not leak into it.
	# shellcheck disable=SC2016
	env -u GARAGE_RPC_HOST -u GARAGE_CONFIG_FILE -u GARAGE_RPC_SECRET -u GARAGE_RPC_SECRET_FILE \
		-u GARAGE_ADMIN_TOKEN -u GARAGE_ADMIN_TOKEN_FILE -u GARAGE_METRICS_TOKEN -u GARAGE_METRICS_TOKEN_FILE \
		NO_COLOR=1 RUST_LOG="${GARAGE_LOG:-garage=info}" setsid nohup bash -c 'echo $$ >"$1"; exec "$2" -c "$3" server' \
		garage-launch "$PIDFILE" "$GARAGE" "$CFG" </dev/null >>"$LOGFILE" 2>&1 8>&- 9>&- &
	for _ in $(seq 100); do
		[[ -s $PIDFILE ]] && { LAUNCHED_PID="$(head -n1 "$PIDFILE")"; return 0; }
		sleep 0.05
	done
	die "garage server did not write its pid file $PIDFILE"
}

log_tail() { echo "---- last lines of $LOGFILE ----" >&2; tail -n 30 -- "$LOGFILE" >&2 || true; }
port_conflict() { tail -c +"$((${LOG_OFFSET:-0} + 1))" -- "$LOGFILE" 2>/dev/null | grep -qi 'address already in use'; }

# wait_for WHAT CMD...: retries CMD until it succeeds. 0 = ready, 2 = port conflict, 1 = failed.
wait_for() {
	local what=$1 deadline=$(($(now_ms) + STARTUP_TIMEOUT * 1000))
	shift
	until "$@" >/dev/null 2>&1 </dev/null; do
		port_conflict && return 2
		if [[ -n ${LAUNCHED_PID:-} ]] && ! kill -0 "$LAUNCHED_PID" 2>/dev/null; then
			log "garage server (pid $LAUNCHED_PID) exited during startup"; log_tail; return 1
		fi
		if (($(now_ms) > deadline)); then
			log "garage: $what not ready within ${STARTUP_TIMEOUT}s"; log_tail; return 1
		fi
		sleep 0.2
	done
}

# Ready = the admin API reports every partition healthy and the S3 port answers as Garage does to
# an unsigned request (403 AccessDenied: the request went through its S3 front end).
s3_ready() {
	curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/health" &&
		[[ "$(curl -s --max-time 5 "http://127.0.0.1:$S3_PORT/$BUCKET")" == *AccessDenied* ]]
}

# Idempotent first-start setup: layout, bucket, key, permissions.
init_cluster() {
	local out node
	out="$(g layout show 2>&1)" || { echo "$out" >&2; die "'garage layout show' failed"; }
	if grep -q '^Current cluster layout version: *0' <<<"$out"; then
		node="$(g node id -q 2>/dev/null | head -n1)"
		node="${node%%@*}"
		[[ $node =~ ^[0-9a-f]{16,}$ ]] || die "could not determine the node id (got '$node')"
		log "assigning layout to node ${node:0:16} and applying version 1"
		wait_for "layout assign" g layout assign -z dc1 -c 1GB "$node" || die "layout assign failed"
		wait_for "layout apply" g layout apply --version 1 || die "layout apply failed"
	fi
	g bucket info "$BUCKET" >/dev/null 2>&1 || wait_for "bucket create" g bucket create "$BUCKET" || die "bucket create failed"
	g key info "$ACCESS_KEY_ID" >/dev/null 2>&1 ||
		wait_for "key import" g key import --yes -n "$BUCKET" "$ACCESS_KEY_ID" "$SECRET_ACCESS_KEY" || die "key import failed"
	wait_for "bucket allow" g bucket allow --read --write --owner "$BUCKET" --key "$ACCESS_KEY_ID" || die "bucket allow failed"
	touch -- "$DIR/.initialized"
}

stop_pid() {
	kill -TERM "$1" 2>/dev/null || return 0
	for i in $(seq 150); do
		kill -0 "$1" 2>/dev/null || return 0
		((i == 100)) && { log "garage (pid $1) still alive after 10s, sending SIGKILL"; kill -KILL "$1" 2>/dev/null || true; }
		sleep 0.1
	done
	die "could not kill garage (pid $1)"
}

# EXIT trap of `start`: a failed start leaves no half-configured server behind.
start_cleanup() {
	local rc=$?
	if ((rc != 0)) && [[ -n ${LAUNCHED_PID:-} ]] && pid_is_ours "$LAUNCHED_PID"; then
		log "start failed; stopping the garage server it launched (pid $LAUNCHED_PID)"
		stop_pid "$LAUNCHED_PID" || true
		rm -f -- "$PIDFILE"
	fi
	return "$rc"
}

cmd_start() {
	set_dir "$1"
	GARAGE="$(ensure_garage)"
	lock_dir
	local t0 pid attempt rc first=0
	t0="$(now_ms)" LAUNCHED_PID=""
	trap start_cleanup EXIT
	if pid="$(running_pid)"; then
		log "garage already running for $DIR (pid $pid)"
		load_instance
		LOG_OFFSET="$(grep -ab 'starting garage server ====' -- "$LOGFILE" 2>/dev/null | tail -n1 | cut -d: -f1)" || true
		[[ -f $DIR/.initialized ]] || init_cluster
		wait_for "S3 API" s3_ready || die "S3 API of the running server is not ready (log: $LOGFILE)"
	else
		[[ -f $CFG ]] || { first=1; log "creating new instance in $DIR"; write_config; }
		load_instance
		for attempt in 1 2 3 4 5; do
			launch_server
			rc=0
			G_TIMEOUT=10 wait_for "RPC (garage status)" g status || rc=$?
			if ((rc == 0)); then
				[[ -f $DIR/.initialized ]] || init_cluster
				wait_for "S3 API" s3_ready || rc=$?
			fi
			((rc == 0)) && break
			pid_is_ours "$LAUNCHED_PID" && stop_pid "$LAUNCHED_PID"
			LAUNCHED_PID=""
			rm -f -- "$PIDFILE"
			if ((rc == 2 && first == 1 && attempt < 5)); then
				log "a port was already in use; picking new ports (attempt $((attempt + 1)))"
				write_config
				load_instance
				continue
			fi
			((rc == 2)) && die "a port of this instance is in use (S3 $S3_PORT, RPC $RPC_PORT, admin $ADMIN_PORT, fixed in $CFG); free it or wipe $DIR"
			die "garage server failed to start (config $CFG, log $LOGFILE)"
		done
	fi
	log "ready: S3 on 127.0.0.1:$S3_PORT, RPC $RPC_PORT, admin $ADMIN_PORT, pid $(head -n1 "$PIDFILE" 2>/dev/null || true), $(($(now_ms) - t0)) ms"
	(umask 077; printf 'export %s\n' "S3_ENDPOINT=http://127.0.0.1:$S3_PORT" "S3_REGION=$REGION" "S3_BUCKET=$BUCKET" \
		"AWS_ACCESS_KEY_ID=$ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY=$SECRET_ACCESS_KEY" "AWS_REGION=$REGION" >"$DIR/env")
	cat "$DIR/env"
	LAUNCHED_PID=""
}

cmd_stop() {
	set_dir "$1"
	[[ -d $DIR ]] || { log "$DIR does not exist; nothing to stop"; return 0; }
	lock_dir
	local pid stopped=0
	while pid="$(running_pid)"; do
		log "stopping garage (pid $pid) for $DIR"
		stop_pid "$pid"
		stopped=1
	done
	rm -f -- "$PIDFILE"
	((stopped)) || log "garage for $DIR is not running"
}

cmd_wipe() {
	set_dir "$1"
	[[ -e $DIR ]] || { log "$DIR does not exist; nothing to wipe"; return 0; }
	[[ -d $DIR ]] || die "$DIR is not a directory"
	# Against `wipe .` or `wipe $HOME`: only an empty directory or one of ours is deleted.
	[[ -f $CFG || -f $INST || -z "$(ls -A -- "$DIR")" ]] ||
		die "$DIR does not look like a garage state directory (no garage.toml); not deleting it"
	cmd_stop "$DIR"
	rm -rf -- "$DIR"
	log "wiped $DIR"
}

case "${1:-} $#" in
"ensure 1") ensure_garage ;;
"start 2") cmd_start "$2" ;;
"stop 2") cmd_stop "$2" ;;
"wipe 2") cmd_wipe "$2" ;;
*) usage ;;
esac
