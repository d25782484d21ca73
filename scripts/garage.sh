#!/usr/bin/env bash
# Single-node Garage (https://garagehq.deuxfleurs.fr) on loopback, for
# corepost integration tests and benchmarks.
#
# Usage:
#   scripts/garage.sh ensure                 install garage if missing, print its path
#   scripts/garage.sh start DIR              start (and on first use configure) an instance
#                                            whose state lives in DIR; prints env lines
#   scripts/garage.sh stop DIR               stop that instance (idempotent)
#   scripts/garage.sh count DIR [PREFIX]     exact number of objects in bucket corepost
#   scripts/garage.sh wipe DIR               stop the instance and delete DIR
#
# State directory layout (DIR):
#   garage.toml    Garage config (loopback ports, sqlite metadata, rf=1). Its presence
#                  means "already configured": `start` then reuses ports and data.
#   instance.sh    sourceable: ports + S3 credentials of this instance
#   meta/ data/    Garage metadata (sqlite) and data blocks
#   garage.log     server log        garage.pid   server pid
#   env            sourceable S3_* / AWS_* exports (also printed by `start` on stdout)
#   .initialized   layout/bucket/key setup done      .lock   flock for start/stop
#
# Several instances (different DIRs) can run at the same time; every port is picked
# at random among the free ones. All progress messages go to stderr; stdout only
# carries the machine-readable result (garage path, env lines, object count).
#
# Environment knobs (all optional):
#   GARAGE_BIN              garage binary to use (default: PATH, then ~/.cargo/bin)
#   GARAGE_VERSION          version passed to `cargo install garage --version` by `ensure`
#   GARAGE_STARTUP_TIMEOUT  seconds to wait for the server / S3 API (default 60)
#   GARAGE_LOG              RUST_LOG for the server (default garage=info)
#
# Written against the Garage v2.x CLI (tested with 2.5.0); the commands used below
# (`layout assign -z -c`, `layout apply --version`, `key import --yes`,
# `bucket allow --read --write --owner`) should be the same in v1.x (untested).
#
# Talking to it with curl: Garage rejects SigV4 requests without an
# x-amz-content-sha256 header ("Missing X-Amz-Content-Sha256 field"), and curl
# (7.88 at least) does not add one by itself, so pass it explicitly, e.g.
#   . DIR/env
#   curl --aws-sigv4 "aws:amz:garage:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
#     -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" -H "content-type: application/json" \
#     -X PUT --data-binary @file.json "$S3_ENDPOINT/$S3_BUCKET/some/key.json"

set -euo pipefail

readonly BUCKET=corepost
readonly REGION=garage
readonly ZONE=dc1
readonly CAPACITY=1GB # only used for partition balancing, not a quota
readonly STARTUP_TIMEOUT="${GARAGE_STARTUP_TIMEOUT:-60}"
# sha256 of the empty string: payload hash for body-less signed requests.
readonly EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

PROG="$(basename -- "${BASH_SOURCE[0]}")"
[[ "$STARTUP_TIMEOUT" =~ ^[1-9][0-9]*$ ]] || {
	echo "$PROG: error: GARAGE_STARTUP_TIMEOUT must be a positive integer (seconds)" >&2
	exit 1
}

die() {
	echo "$PROG: error: $*" >&2
	exit 1
}
log() { echo "$PROG: $*" >&2; }

usage() {
	sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------
# garage binary
# ---------------------------------------------------------------------------

find_garage() {
	local c
	if [[ -n "${GARAGE_BIN:-}" ]]; then
		[[ -x "$GARAGE_BIN" ]] || return 1
		echo "$GARAGE_BIN"
		return 0
	fi
	if c="$(command -v garage 2>/dev/null)" && [[ -n "$c" ]]; then
		echo "$c"
		return 0
	fi
	for c in "${CARGO_HOME:-$HOME/.cargo}/bin/garage" "$HOME/.cargo/bin/garage"; do
		if [[ -x "$c" ]]; then
			echo "$c"
			return 0
		fi
	done
	return 1
}

find_cargo() {
	local c
	if c="$(command -v cargo 2>/dev/null)" && [[ -n "$c" ]]; then
		echo "$c"
		return 0
	fi
	for c in "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" "$HOME/.cargo/bin/cargo"; do
		if [[ -x "$c" ]]; then
			echo "$c"
			return 0
		fi
	done
	return 1
}

# Prints the garage path; installs it with cargo if needed.
ensure_garage() {
	local g cargo lockfile rc
	if [[ -n "${GARAGE_BIN:-}" && ! -x "$GARAGE_BIN" ]]; then
		die "GARAGE_BIN=$GARAGE_BIN is not an executable file"
	fi
	if g="$(find_garage)"; then
		echo "$g"
		return 0
	fi
	cargo="$(find_cargo)" || die "garage is not installed and cargo was not found; install Rust (https://rustup.rs) or put garage on PATH / set GARAGE_BIN"
	command -v cc >/dev/null 2>&1 || die "garage is not installed and building it needs a C compiler (cc); try: apt-get install -y build-essential"
	command -v make >/dev/null 2>&1 || die "garage is not installed and building it needs make; try: apt-get install -y build-essential"

	# Serialize concurrent installs (e.g. several test jobs calling `start` at once).
	lockfile="${TMPDIR:-/tmp}/corepost-garage-install.lock"
	if command -v flock >/dev/null 2>&1; then
		exec 8>>"$lockfile"
		log "waiting for install lock $lockfile"
		flock 8
	fi
	if g="$(find_garage)"; then # installed by someone else meanwhile
		exec 8>&- 2>/dev/null || true
		echo "$g"
		return 0
	fi
	local -a args=(install garage --locked)
	[[ -n "${GARAGE_VERSION:-}" ]] && args+=(--version "$GARAGE_VERSION")
	log "garage not found; running: cargo ${args[*]} (takes 10+ minutes)"
	rc=0
	"$cargo" "${args[@]}" >&2 || rc=$?
	exec 8>&- 2>/dev/null || true
	((rc == 0)) || die "cargo install garage failed (exit $rc); see the cargo output above"
	g="$(find_garage)" || die "cargo install garage succeeded but no garage binary was found in PATH or ${CARGO_HOME:-$HOME/.cargo}/bin"
	echo "$g"
}

garage_major_version() {
	local v
	v="$("$GARAGE" --version 2>/dev/null | head -n1)" || true
	if [[ "$v" =~ v?([0-9]+)\.[0-9]+ ]]; then
		echo "${BASH_REMATCH[1]}"
	else
		echo 2
	fi
}

# Run the garage CLI against instance DIR (with a timeout, G_TIMEOUT seconds), ignoring
# any GARAGE_* overrides from the caller's environment that could point it elsewhere.
g() {
	timeout "${G_TIMEOUT:-60}" env -u GARAGE_RPC_HOST -u GARAGE_CONFIG_FILE -u GARAGE_RPC_SECRET -u GARAGE_RPC_SECRET_FILE \
		-u GARAGE_ADMIN_TOKEN -u GARAGE_ADMIN_TOKEN_FILE -u GARAGE_METRICS_TOKEN -u GARAGE_METRICS_TOKEN_FILE \
		"$GARAGE" -c "$CFG" "$@"
}

# ---------------------------------------------------------------------------
# state directory
# ---------------------------------------------------------------------------

set_dir() {
	[[ -n "${1:-}" ]] || die "missing state directory argument"
	# shellcheck disable=SC1003 # a literal backslash pattern
	case "$1" in
	*'"'* | *'\'* | *$'\n'*) die "state directory must not contain quotes, backslashes or newlines: $1" ;;
	esac
	DIR="$(realpath -m -- "$1")"
	[[ "$DIR" != "/" ]] || die "refusing to use / as state directory"
	CFG="$DIR/garage.toml"
	INST="$DIR/instance.sh"
	PIDFILE="$DIR/garage.pid"
	LOGFILE="$DIR/garage.log"
	ENVFILE="$DIR/env"
}

lock_dir() {
	mkdir -p -- "$DIR"
	if command -v flock >/dev/null 2>&1; then
		exec 9>>"$DIR/.lock"
		flock -w 120 9 || die "timed out waiting for lock $DIR/.lock (another $PROG on the same DIR?)"
	fi
}

rand_hex() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

# Three distinct free TCP ports on 127.0.0.1: "s3 rpc admin".
pick_ports() {
	if command -v python3 >/dev/null 2>&1; then
		python3 - <<'EOF' && return 0
import socket
socks = []
for _ in range(3):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
	fi
	# Fallback without python: random ports nobody listens on.
	local -a ports=()
	local p tries=0
	while ((${#ports[@]} < 3)); do
		((++tries < 1000)) || die "could not find free TCP ports"
		p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
		[[ " ${ports[*]-} " == *" $p "* ]] && continue
		if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then continue; fi
		ports+=("$p")
	done
	echo "${ports[*]}"
}

# Writes instance.sh (ports + fresh credentials on first call) and garage.toml.
write_config() {
	local s3 rpc admin access secret
	read -r s3 rpc admin < <(pick_ports)
	[[ -n "$admin" ]] || die "could not pick free ports"
	if [[ -f "$INST" ]]; then
		# keep credentials if we are only re-picking ports
		# shellcheck disable=SC1090
		. "$INST"
		access="$ACCESS_KEY_ID"
		secret="$SECRET_ACCESS_KEY"
	else
		access="GK$(rand_hex 12)"
		secret="$(rand_hex 32)"
	fi
	mkdir -p -- "$DIR/meta" "$DIR/data"
	local old_umask
	old_umask="$(umask)"
	umask 077
	cat >"$INST.tmp" <<EOF
# generated by $PROG; sourced by $PROG
S3_PORT=$s3
RPC_PORT=$rpc
ADMIN_PORT=$admin
ACCESS_KEY_ID=$access
SECRET_ACCESS_KEY=$secret
EOF
	mv -f -- "$INST.tmp" "$INST"

	local replication='replication_factor = 1'
	if [[ "$(garage_major_version)" == 0 ]]; then
		replication='replication_mode = "none"'
	fi
	cat >"$CFG.tmp" <<EOF
# generated by $PROG
metadata_dir = "$DIR/meta"
data_dir = "$DIR/data"
db_engine = "sqlite"
$replication

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
	mv -f -- "$CFG.tmp" "$CFG"
	umask "$old_umask"
}

load_instance() {
	[[ -f "$INST" ]] || die "no garage instance in $DIR ($INST missing); run '$PROG start $DIR' first"
	# shellcheck disable=SC1090
	. "$INST"
	[[ -n "${S3_PORT:-}" && -n "${ACCESS_KEY_ID:-}" && -n "${SECRET_ACCESS_KEY:-}" ]] || die "$INST is incomplete"
}

# ---------------------------------------------------------------------------
# process management
# ---------------------------------------------------------------------------

# Is PID a garage server for this DIR's config? (guards against pid reuse)
pid_is_ours() {
	local pid="$1" i
	local -a argv=()
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	[[ -d /proc/self ]] || return 0 # no procfs: trust the pid file
	mapfile -d '' argv <"/proc/$pid/cmdline" 2>/dev/null || return 1
	# expect: ... -c <CFG> server
	for ((i = 0; i + 2 < ${#argv[@]}; i++)); do
		[[ "${argv[i]}" == -c && "${argv[i + 1]}" == "$CFG" && "${argv[i + 2]}" == server ]] && return 0
	done
	return 1
}

# Prints the pid of the running server of DIR, if any.
running_pid() {
	local pid p
	if [[ -f "$PIDFILE" ]]; then
		pid="$(head -n1 "$PIDFILE" 2>/dev/null || true)"
		if pid_is_ours "$pid"; then
			echo "$pid"
			return 0
		fi
	fi
	# pid file lost/stale: look for a server started with exactly this config
	if [[ -f "$CFG" && -d /proc/self ]]; then
		for p in /proc/[0-9]*; do
			p="${p#/proc/}"
			if pid_is_ours "$p"; then
				echo "$p"
				return 0
			fi
		done
	fi
	return 1
}

launch_server() {
	: >>"$LOGFILE"
	# Remember where this run's log starts, to look for errors of this run only.
	LOG_OFFSET="$(wc -c <"$LOGFILE")"
	echo "==== $(date -u +%FT%TZ) $PROG: starting garage server ====" >>"$LOGFILE"
	rm -f -- "$PIDFILE"
	local -a detach=()
	command -v setsid >/dev/null 2>&1 && detach=(setsid)
	# The inner shell records its own pid and execs garage, so the pid file is right
	# whether or not setsid forks. fds 8/9 (our locks) must not leak into the server.
	# shellcheck disable=SC2016 # $$ and $1.. are expanded by the inner shell
	env -u GARAGE_RPC_HOST -u GARAGE_CONFIG_FILE -u GARAGE_RPC_SECRET -u GARAGE_RPC_SECRET_FILE \
		-u GARAGE_ADMIN_TOKEN -u GARAGE_ADMIN_TOKEN_FILE -u GARAGE_METRICS_TOKEN -u GARAGE_METRICS_TOKEN_FILE \
		NO_COLOR=1 RUST_LOG="${GARAGE_LOG:-garage=info}" \
		"${detach[@]}" nohup bash -c 'echo $$ >"$1"; exec "$2" -c "$3" server' garage-launch \
		"$PIDFILE" "$GARAGE" "$CFG" </dev/null >>"$LOGFILE" 2>&1 8>&- 9>&- &
	local i
	for ((i = 0; i < 100; i++)); do
		if [[ -s "$PIDFILE" ]]; then
			LAUNCHED_PID="$(head -n1 "$PIDFILE")"
			return 0
		fi
		sleep 0.05
	done
	die "garage server did not write its pid file $PIDFILE"
}

log_tail() {
	echo "---- last lines of $LOGFILE ----" >&2
	tail -n 30 -- "$LOGFILE" >&2 2>/dev/null || true
	echo "----" >&2
}

# Did this run of the server fail to bind one of its ports? (Garage keeps running
# when only the S3 or admin listener fails, so the process being alive is not enough.)
port_conflict() {
	tail -c +"$((${LOG_OFFSET:-0} + 1))" -- "$LOGFILE" 2>/dev/null | grep -qi 'address already in use'
}

# Waits until the server answers RPC (`garage status`).
# Returns 0 when ready, 2 on a port conflict, 1 on other failures.
wait_rpc() {
	local deadline pid="$LAUNCHED_PID"
	deadline=$(($(now_ms) + STARTUP_TIMEOUT * 1000))
	while :; do
		port_conflict && return 2
		if ! kill -0 "$pid" 2>/dev/null; then
			port_conflict && return 2
			log "garage server (pid $pid) exited during startup"
			log_tail
			return 1
		fi
		if G_TIMEOUT=10 g status >/dev/null 2>&1 </dev/null; then
			return 0
		fi
		if (($(now_ms) > deadline)); then
			log "garage server (pid $pid) did not answer 'garage status' within ${STARTUP_TIMEOUT}s"
			log_tail
			return 1
		fi
		sleep 0.2
	done
}

stop_pid() {
	local pid="$1" i
	kill -TERM "$pid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	log "garage (pid $pid) still alive after 10s, sending SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((i = 0; i < 50; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	die "could not kill garage (pid $pid)"
}

# Retry a garage CLI command for up to STARTUP_TIMEOUT seconds (right after the
# layout is applied the tables may briefly report quorum errors).
retry_g() {
	local deadline out rc
	deadline=$(($(now_ms) + STARTUP_TIMEOUT * 1000))
	while :; do
		rc=0
		out="$(g "$@" 2>&1)" || rc=$?
		((rc == 0)) && return 0
		if (($(now_ms) > deadline)); then
			log "'garage $*' failed (exit $rc):"
			echo "$out" >&2
			log_tail
			return 1
		fi
		sleep 0.3
	done
}

# Idempotent first-start setup: layout, bucket, key, permissions.
init_cluster() {
	local out ver node
	out="$(g layout show 2>&1)" || {
		echo "$out" >&2
		die "'garage layout show' failed"
	}
	ver="$(sed -n 's/^Current cluster layout version: *\([0-9][0-9]*\).*/\1/p' <<<"$out")"
	[[ -n "$ver" ]] || {
		echo "$out" >&2
		die "could not parse the layout version from 'garage layout show'"
	}
	if [[ "$ver" == 0 ]]; then
		node="$(g node id -q 2>/dev/null | head -n1)"
		node="${node%%@*}"
		[[ "$node" =~ ^[0-9a-f]{16,}$ ]] || die "could not determine the node id (got '$node')"
		log "assigning layout to node ${node:0:16} and applying version 1"
		retry_g layout assign -z "$ZONE" -c "$CAPACITY" "$node" || die "layout assign failed"
		retry_g layout apply --version 1 || die "layout apply failed"
	fi
	if ! g bucket info "$BUCKET" >/dev/null 2>&1; then
		log "creating bucket $BUCKET"
		retry_g bucket create "$BUCKET" || die "bucket create failed"
	fi
	if ! g key info "$ACCESS_KEY_ID" >/dev/null 2>&1; then
		log "importing access key $ACCESS_KEY_ID"
		retry_g key import --yes -n "$BUCKET" "$ACCESS_KEY_ID" "$SECRET_ACCESS_KEY" || die "key import failed"
	fi
	retry_g bucket allow --read --write --owner "$BUCKET" --key "$ACCESS_KEY_ID" || die "bucket allow failed"
	touch -- "$DIR/.initialized"
}

# ---------------------------------------------------------------------------
# S3 client (curl --aws-sigv4, python3 fallback)
# ---------------------------------------------------------------------------

# RFC 3986 percent-encoding as required by SigV4 canonical query strings.
urlencode() {
	local LC_ALL=C s="$1" out="" c i
	for ((i = 0; i < ${#s}; i++)); do
		c="${s:i:1}"
		case "$c" in
		[A-Za-z0-9._~-]) out+="$c" ;;
		*) out+="$(printf '%%%02X' "'$c")" ;;
		esac
	done
	printf '%s' "$out"
}

# curl >= 7.75 has --aws-sigv4. (_CURL_SIGV4=no in the environment forces the
# python3 fallback, for testing.)
curl_has_sigv4() {
	[[ -n "${_CURL_SIGV4:-}" ]] || {
		if command -v curl >/dev/null 2>&1 && curl --help all 2>/dev/null | grep -q -- '--aws-sigv4'; then
			_CURL_SIGV4=yes
		else
			_CURL_SIGV4=no
		fi
	}
	[[ "$_CURL_SIGV4" == yes ]]
}

# s3_get PATH QUERY OUTFILE: signed GET, body to OUTFILE, HTTP status in S3_STATUS
# ("000" if the connection failed).
# QUERY must already be canonical (sorted by name, RFC 3986 encoded): curl 7.88
# signs the query string as given. Garage rejects signed requests without an
# x-amz-content-sha256 header, which curl (at least up to 7.88) does not add, so
# we send the hash of the empty body ourselves.
s3_get() {
	local path="$1" query="$2" out="$3" url
	url="http://127.0.0.1:$S3_PORT$path${query:+?$query}"
	: >"$out"
	if curl_has_sigv4; then
		S3_STATUS="$(curl -sS -o "$out" -w '%{http_code}' --max-time "${S3_MAX_TIME:-60}" \
			--aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY_ID:$SECRET_ACCESS_KEY" \
			-H "x-amz-content-sha256: $EMPTY_SHA256" "$url" 2>/dev/null)" || S3_STATUS=000
	elif command -v python3 >/dev/null 2>&1; then
		S3_STATUS="$(python3 -c "$PY_SIGV4_GET" "$url" "$ACCESS_KEY_ID" "$SECRET_ACCESS_KEY" "$REGION" "$out" "${S3_MAX_TIME:-60}")" || S3_STATUS=000
	else
		die "need curl >= 7.75 (for --aws-sigv4) or python3 to talk to S3"
	fi
}

# Fallback SigV4 GET client for systems whose curl lacks --aws-sigv4.
# argv: url access_key secret_key region outfile timeout; prints the HTTP status.
PY_SIGV4_GET='
import datetime, hashlib, hmac, sys, urllib.error, urllib.parse, urllib.request
url, ak, sk, region, out = sys.argv[1:6]
u = urllib.parse.urlsplit(url)
now = datetime.datetime.now(datetime.timezone.utc)
amzdate, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
payload = hashlib.sha256(b"").hexdigest()
hdrs = {"host": u.netloc, "x-amz-content-sha256": payload, "x-amz-date": amzdate}
signed = ";".join(sorted(hdrs))
creq = "\n".join(["GET", u.path, u.query] + [k + ":" + hdrs[k] for k in sorted(hdrs)] + ["", signed, payload])
scope = day + "/" + region + "/s3/aws4_request"
sts = "\n".join(["AWS4-HMAC-SHA256", amzdate, scope, hashlib.sha256(creq.encode()).hexdigest()])
k = ("AWS4" + sk).encode()
for part in (day, region, "s3", "aws4_request"):
    k = hmac.new(k, part.encode(), hashlib.sha256).digest()
sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
req = urllib.request.Request(url, headers={
    "x-amz-content-sha256": payload, "x-amz-date": amzdate,
    "Authorization": "AWS4-HMAC-SHA256 Credential=" + ak + "/" + scope
    + ", SignedHeaders=" + signed + ", Signature=" + sig})
try:
    r = urllib.request.urlopen(req, timeout=float(sys.argv[6]))
    code, body = r.status, r.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
except Exception:
    code, body = 0, b""
open(out, "wb").write(body)
print("%03d" % code)
'

# Waits until a signed ListObjectsV2 on the bucket succeeds: proves that the S3
# port is up, the layout is active, and the key can read the bucket.
# Returns 0 when ready, 2 on a port conflict, 1 on other failures.
wait_s3() {
	local deadline tmp rc=1
	deadline=$(($(now_ms) + STARTUP_TIMEOUT * 1000))
	tmp="$(mktemp)"
	while :; do
		S3_MAX_TIME=5 s3_get "/$BUCKET" "list-type=2&max-keys=1" "$tmp"
		if [[ "$S3_STATUS" == 200 ]]; then
			rc=0
			break
		fi
		if port_conflict; then
			rc=2
			break
		fi
		if [[ -n "${LAUNCHED_PID:-}" ]] && ! kill -0 "$LAUNCHED_PID" 2>/dev/null; then
			log "garage server (pid $LAUNCHED_PID) exited"
			log_tail
			break
		fi
		if (($(now_ms) > deadline)); then
			log "S3 API on 127.0.0.1:$S3_PORT not ready after ${STARTUP_TIMEOUT}s (last HTTP status $S3_STATUS)"
			[[ -s "$tmp" ]] && { cat -- "$tmp" >&2; echo >&2; }
			log_tail
			break
		fi
		sleep 0.2
	done
	rm -f -- "$tmp"
	return "$rc"
}

write_env() {
	local content
	content="export S3_ENDPOINT=http://127.0.0.1:$S3_PORT
export S3_REGION=$REGION
export S3_BUCKET=$BUCKET
export AWS_ACCESS_KEY_ID=$ACCESS_KEY_ID
export AWS_SECRET_ACCESS_KEY=$SECRET_ACCESS_KEY
export AWS_REGION=$REGION"
	(
		umask 077
		printf '%s\n' "$content" >"$ENVFILE.tmp"
	)
	mv -f -- "$ENVFILE.tmp" "$ENVFILE"
	printf '%s\n' "$content"
}

# ---------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------

cmd_ensure() {
	ensure_garage
}

# EXIT trap of `start`: if we launched a server and then failed, do not leave a
# half-configured server behind.
start_cleanup() {
	local rc=$?
	if ((rc != 0)) && [[ -n "${LAUNCHED_PID:-}" ]] && pid_is_ours "$LAUNCHED_PID"; then
		log "start failed; stopping the garage server it launched (pid $LAUNCHED_PID)"
		stop_pid "$LAUNCHED_PID" || true
		rm -f -- "$PIDFILE"
	fi
	return "$rc"
}

cmd_start() {
	set_dir "${1:-}"
	GARAGE="$(ensure_garage)"
	lock_dir
	local t0 pid attempt rc first=0
	t0="$(now_ms)"
	LAUNCHED_PID=""
	trap start_cleanup EXIT

	if pid="$(running_pid)"; then
		log "garage already running for $DIR (pid $pid)"
		[[ -f "$CFG" ]] || die "$CFG missing although a server is running"
		load_instance
		# only look at the log of the current server run for port conflicts
		LOG_OFFSET="$(grep -ab 'starting garage server ====' -- "$LOGFILE" 2>/dev/null | tail -n1 | cut -d: -f1)" || true
		[[ -f "$DIR/.initialized" ]] || init_cluster
		wait_s3 || die "S3 API of the running server is not ready (log: $LOGFILE)"
	else
		if [[ ! -f "$CFG" ]]; then
			first=1
			log "creating new instance in $DIR"
			write_config
		fi
		load_instance
		for attempt in 1 2 3 4 5; do
			launch_server
			rc=0
			wait_rpc || rc=$?
			if ((rc == 0)); then
				[[ -f "$DIR/.initialized" ]] || init_cluster
				wait_s3 || rc=$?
			fi
			((rc == 0)) && break
			# failed: stop what we launched before retrying or giving up
			pid_is_ours "$LAUNCHED_PID" && stop_pid "$LAUNCHED_PID"
			LAUNCHED_PID=""
			rm -f -- "$PIDFILE"
			if ((rc == 2 && first == 1 && attempt < 5)); then
				log "a port was already in use; picking new ports (attempt $((attempt + 1)))"
				write_config
				load_instance
				continue
			fi
			if ((rc == 2)); then
				tail -c +"$((LOG_OFFSET + 1))" -- "$LOGFILE" | grep -i 'address already in use' >&2 || true
				die "a port of this instance is already in use (S3 $S3_PORT, RPC $RPC_PORT, admin $ADMIN_PORT, fixed in $CFG); free it or wipe $DIR"
			fi
			die "garage server failed to start (config $CFG, log $LOGFILE)"
		done
	fi

	log "ready: S3 on 127.0.0.1:$S3_PORT, RPC $RPC_PORT, admin $ADMIN_PORT, pid $(head -n1 "$PIDFILE" 2>/dev/null || true), $(($(now_ms) - t0)) ms"
	write_env
	LAUNCHED_PID=""
}

cmd_stop() {
	set_dir "${1:-}"
	if [[ ! -d "$DIR" ]]; then
		log "$DIR does not exist; nothing to stop"
		return 0
	fi
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

# Exact object count. `garage bucket info` also reports an object count, but it comes
# from Garage's counter table, which is updated asynchronously (queued inserts into a
# CRDT counter table), can lag right after writes, and cannot filter by prefix. So we
# list the bucket with paginated, signed S3 ListObjectsV2 requests (1000 keys per page,
# curl --aws-sigv4; ~100 requests for 100k objects) and count <Contents> entries,
# cross-checked against the KeyCount of each page.
cmd_count() {
	set_dir "${1:-}"
	local prefix="${2:-}"
	load_instance
	running_pid >/dev/null || die "garage for $DIR is not running (run: $PROG start $DIR)"
	local total=0 token="" query n kc truncated pages=0
	PAGE="$(mktemp)"
	trap 'rm -f -- "$PAGE"' EXIT
	while :; do
		query=""
		[[ -n "$token" ]] && query+="continuation-token=$(urlencode "$token")&"
		query+="list-type=2&max-keys=1000"
		[[ -n "$prefix" ]] && query+="&prefix=$(urlencode "$prefix")"
		s3_get "/$BUCKET" "$query" "$PAGE"
		if [[ "$S3_STATUS" != 200 ]]; then
			cat -- "$PAGE" >&2
			echo >&2
			die "ListObjectsV2 failed with HTTP status $S3_STATUS"
		fi
		pages=$((pages + 1))
		# One pass over the page (XML on one line): split on '<', count <Contents>
		# elements, extract KeyCount, IsTruncated and NextContinuationToken.
		read -r n kc truncated token < <(awk 'BEGIN { RS = "<"; n = 0; kc = "-"; tr = "-"; tok = "-" }
			/^Contents>/ { n++ }
			/^KeyCount>/ { kc = substr($0, 10) }
			/^IsTruncated>/ { tr = substr($0, 13) }
			/^NextContinuationToken>/ { tok = substr($0, 23) }
			END { print n, kc, tr, tok }' "$PAGE") || die "could not parse ListObjectsV2 page $pages"
		if [[ "$kc" != - && "$kc" != "$n" ]]; then
			die "page $pages: KeyCount $kc does not match $n <Contents> entries"
		fi
		total=$((total + n))
		[[ "$truncated" == true ]] || break
		[[ -n "$token" && "$token" != - ]] || die "page $pages: truncated listing without NextContinuationToken"
	done
	echo "$total"
}

cmd_wipe() {
	set_dir "${1:-}"
	if [[ ! -e "$DIR" ]]; then
		log "$DIR does not exist; nothing to wipe"
		return 0
	fi
	[[ -d "$DIR" ]] || die "$DIR is not a directory"
	# Safety net against `wipe .` or `wipe $HOME`: only delete directories that are
	# empty or look like one of our state directories.
	if [[ ! -f "$CFG" && ! -f "$INST" && -n "$(ls -A -- "$DIR")" ]]; then
		die "$DIR does not look like a garage state directory (no garage.toml); not deleting it"
	fi
	cmd_stop "$DIR"
	rm -rf -- "$DIR"
	log "wiped $DIR"
}

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	case "$cmd" in
	ensure)
		[[ $# -eq 0 ]] || usage
		cmd_ensure
		;;
	start)
		[[ $# -eq 1 ]] || usage
		cmd_start "$1"
		;;
	stop)
		[[ $# -eq 1 ]] || usage
		cmd_stop "$1"
		;;
	count)
		[[ $# -eq 1 || $# -eq 2 ]] || usage
		cmd_count "$@"
		;;
	wipe)
		[[ $# -eq 1 ]] || usage
		cmd_wipe "$1"
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
