#!/usr/bin/env bash
# Usage: scripts/compose-smoke.sh     (make compose-smoke)
#
# The docker-compose.yml cluster end to end: validates the file, brings up
# PostgreSQL, the one-shot migrate job, three `agentsessions serve` replicas
# and the nginx load balancer (images from scripts/containers.sh: official
# ones where a registry answers, else built here), then checks through the
# replicas' own host ports that they share one store:
#   - a per-agent limit set on replica 1 is seen on replica 3;
#   - replica 1 issues sessions up to that limit; replica 2 refuses one more;
#   - replica 3 authenticates a token issued by replica 1;
#   - replica 2 revokes it; replica 1 then refuses the token, and replica 2
#     issues again (the slot is free);
#   - the load balancer answers, and authenticates on every replica;
#   - no replica restarted, all use the PostgreSQL store, no token in the logs.
# Always tears the stack down (containers, network, volume), also on failure
# or ^C; on failure it first prints the containers' state and recent logs.
#
# Isolated from `make up` and other runs: its own compose project
# (AGENTSESSIONS_SMOKE_PROJECT, default agentsessions-smoke) and free host
# ports from AGENTSESSIONS_SMOKE_PORT (default 18080) upwards. A fresh random
# secret and admin key per run; neither is printed.
# Exit status: 0 passed, 1 failed, 3 no Docker engine can be had here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export COMPOSE_PROJECT_NAME=${AGENTSESSIONS_SMOKE_PROJECT:-agentsessions-smoke}
containers=scripts/containers.sh
passed=0
failed=0

log() { echo "compose-smoke: $*" >&2; }
ok() {
	passed=$((passed + 1))
	echo "  ok   $*"
}
fail() {
	failed=$((failed + 1))
	echo "  FAIL $*"
	exit 1
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# next_free_port FROM: the first port >= FROM that nothing listens on.
next_free_port() {
	local p=$1
	while ! port_free "$p"; do
		p=$((p + 1))
		((p < 65000)) || {
			log "no free port"
			exit 1
		}
	done
	echo "$p"
}

tmp=$(mktemp -d)
teardown() {
	local rc=$?
	trap - EXIT INT TERM
	rm -rf "$tmp"
	if [[ $rc != 0 && ${stack_started:-false} == true ]]; then
		echo "--- containers (failure: state and last log lines follow)"
		$containers compose ps || true
		$containers compose logs --no-color --tail 40 || true
	fi
	if [[ ${stack_started:-false} == true ]]; then
		log "tearing down project $COMPOSE_PROJECT_NAME"
		$containers compose down -v --remove-orphans >/dev/null 2>&1 ||
			log "warning: compose down failed; remove the project's containers by hand"
	fi
	if [[ $rc == 0 ]]; then
		echo "compose-smoke: $passed passed, 0 failed"
	elif [[ $rc != 3 ]]; then
		echo "compose-smoke: $passed passed, 1 failed"
	fi
	exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- engine and images (exit 3 passes through: no engine here)
rc=0
exports=$($containers prepare) || rc=$?
if [[ $rc != 0 ]]; then
	exit "$rc"
fi
eval "$exports"
export AGENTSESSIONS_POSTGRES_IMAGE AGENTSESSIONS_LB_IMAGE

# --- ports, secrets
p=$(next_free_port "${AGENTSESSIONS_SMOKE_PORT:-18080}")
export AGENTSESSIONS_LB_PORT=$p
p=$(next_free_port $((p + 1))) && export AGENTSESSIONS_SERVE1_PORT=$p
p=$(next_free_port $((p + 1))) && export AGENTSESSIONS_SERVE2_PORT=$p
p=$(next_free_port $((p + 1))) && export AGENTSESSIONS_SERVE3_PORT=$p
p=$(next_free_port $((p + 1))) && export AGENTSESSIONS_PG_PORT=$p
AGENTSESSIONS_SECRET=$(head -c 32 /dev/urandom | base64)
AGENTSESSIONS_ADMIN_KEY=$(head -c 32 /dev/urandom | base64)
export AGENTSESSIONS_SECRET AGENTSESSIONS_ADMIN_KEY
admin_key=$AGENTSESSIONS_ADMIN_KEY
R1=http://127.0.0.1:$AGENTSESSIONS_SERVE1_PORT
R2=http://127.0.0.1:$AGENTSESSIONS_SERVE2_PORT
R3=http://127.0.0.1:$AGENTSESSIONS_SERVE3_PORT
LB=http://127.0.0.1:$AGENTSESSIONS_LB_PORT

echo "== compose config"
$containers compose config -q || fail "docker-compose.yml does not validate"
ok "docker-compose.yml validates ($($containers compose version --short 2>/dev/null || true))"

echo "== up (project $COMPOSE_PROJECT_NAME; lb :$AGENTSESSIONS_LB_PORT, replicas :$AGENTSESSIONS_SERVE1_PORT :$AGENTSESSIONS_SERVE2_PORT :$AGENTSESSIONS_SERVE3_PORT)"
# A leftover of an interrupted run would hold the same names.
$containers compose down -v --remove-orphans >/dev/null 2>&1 || true
stack_started=true
start=$SECONDS
$containers up || fail "the stack did not come up"
ok "postgres healthy, migrate exited 0, replicas and lb started ($((SECONDS - start))s, incl. the app image)"
start=$SECONDS

# wait_ready URL: /readyz answers 200 within 60 s.
wait_ready() {
	local i
	for ((i = 0; i < 120; i++)); do
		if [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1/readyz") == 200 ]]; then
			return 0
		fi
		sleep 0.5
	done
	return 1
}
for r in "$R1" "$R2" "$R3" "$LB"; do
	wait_ready "$r" || fail "$r/readyz did not answer 200 within 60s"
done
ok "replicas 1-3 and the load balancer are ready ($((SECONDS - start))s later)"

# --- HTTP helpers: call METHOD URL [BODY] [admin]; sets $code and $body.
call() {
	local args=(-s -o "$tmp/body" -w '%{http_code}' --max-time 10 -X "$1" "$2")
	if [[ -n ${3:-} ]]; then args+=(-H 'Content-Type: application/json' --data "$3"); fi
	# The admin key goes through a header file, not the command line.
	if [[ ${4:-} == admin ]]; then
		printf 'Authorization: Bearer %s\n' "$admin_key" >"$tmp/auth"
		args+=(-H "@$tmp/auth")
	fi
	code=$(curl "${args[@]}") || code=000
	body=$(cat "$tmp/body" 2>/dev/null || true)
}
json() { jq -r "$1" <<<"$body"; }
expect() { # expect CODE WHAT
	[[ $code == "$1" ]] || fail "$2: want HTTP $1, got $code: $body"
}

command -v jq >/dev/null 2>&1 || fail "jq is needed (apt-get install jq)"
agent="smoke-$(head -c 6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
limit=3

echo "== limit shared by the replicas (agent $agent)"
call PUT "$R1/v1/agents/$agent/limit" "{\"limit\":$limit}" admin
expect 200 "set the agent's limit on replica 1"
call GET "$R3/v1/agents/$agent/limit" "" admin
expect 200 "get the agent's limit on replica 3"
[[ $(json .limit) == "$limit" && $(json .override) == true ]] || fail "replica 3 sees limit $(json .limit), override $(json .override)"
ok "limit $limit set on replica 1 is the override on replica 3"

echo "== issue on replica 1 up to the limit; replica 2 refuses one more"
tokens=() ids=()
for ((i = 1; i <= limit; i++)); do
	call POST "$R1/v1/sessions" "{\"agent_id\":\"$agent\",\"metadata\":{\"client\":\"compose-smoke\"}}" admin
	expect 201 "issue $i/$limit on replica 1"
	tokens+=("$(json .token)")
	ids+=("$(json .session.id)")
done
ok "replica 1 issued $limit sessions"
call POST "$R2/v1/sessions" "{\"agent_id\":\"$agent\"}" admin
expect 409 "issue over the limit on replica 2"
[[ $(json .error.code) == limit_exceeded ]] || fail "replica 2 refused with $(json .error.code), want limit_exceeded"
ok "replica 2 refuses session $((limit + 1)): 409 limit_exceeded"

echo "== authenticate on replica 3, revoke on replica 2, replica 1 refuses"
auth_body() { printf '{"agent_id":"%s","token":"%s"}' "$agent" "$1"; }
call POST "$R3/v1/sessions/authenticate" "$(auth_body "${tokens[0]}")"
expect 200 "authenticate replica 1's token on replica 3"
[[ $(json .session.id) == "${ids[0]}" ]] || fail "replica 3 authenticated session $(json .session.id), want ${ids[0]}"
ok "replica 3 authenticates the token replica 1 issued"
call DELETE "$R2/v1/sessions/${ids[0]}" "" admin
expect 204 "revoke on replica 2"
ok "replica 2 revokes it"
call POST "$R1/v1/sessions/authenticate" "$(auth_body "${tokens[0]}")"
expect 401 "authenticate the revoked token on replica 1"
[[ $(json .error.code) == unauthorized ]] || fail "replica 1 refused with $(json .error.code), want unauthorized"
ok "replica 1 refuses the revoked token: 401 unauthorized"
call POST "$R2/v1/sessions" "{\"agent_id\":\"$agent\"}" admin
expect 201 "issue on replica 2 after the revoke"
tokens+=("$(json .token)")
ok "replica 2 issues again: the revoke freed a slot"

echo "== through the load balancer"
served=()
for ((i = 0; i < 6; i++)); do
	call POST "$LB/v1/sessions/authenticate" "$(auth_body "${tokens[1]}")"
	expect 200 "authenticate through the load balancer ($((i + 1))/6)"
done
call POST "$LB/v1/sessions/authenticate" "$(auth_body "${tokens[0]}")"
expect 401 "the revoked token through the load balancer"
ok "load balancer: a live token authenticates (6 times), the revoked one is refused"

echo "== replicas' health and logs"
logs=$($containers compose logs --no-color serve1 serve2 serve3 2>&1)
for s in serve1 serve2 serve3; do
	cid=$($containers compose ps -q "$s")
	restarts=$(docker inspect -f '{{.RestartCount}}' "$cid")
	[[ $restarts == 0 ]] || fail "$s restarted $restarts times"
	grep -q "$s.*\"store\":\"postgres\"" <<<"$logs" || fail "$s does not log store=postgres"
	# Each replica got some of the load balancer's requests.
	n=$(grep -c "$s.*/v1/sessions/authenticate" <<<"$logs" || true)
	served+=("$s:$n")
done
ok "no replica restarted; each runs on the PostgreSQL store; authenticate requests logged per replica: ${served[*]}"
for t in "${tokens[@]}"; do
	if grep -qF "$t" <<<"$logs"; then fail "a token appears in the replicas' logs"; fi
done
if grep -qF "$admin_key" <<<"$logs"; then fail "the admin key appears in the replicas' logs"; fi
ok "no token and no admin key in the replicas' logs"
