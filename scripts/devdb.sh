#!/usr/bin/env bash
# Usage: scripts/devdb.sh DBNAME
#        scripts/devdb.sh --stop
#
# Prints a connection URL for a local PostgreSQL database named DBNAME,
# creating the database if needed. Everything else goes to stderr.
#
# Server, first that works:
#   1. one answering on 127.0.0.1:${AGENTSESSIONS_PROBE_PORT:-5432} (user postgres, no password);
#   2. a throwaway cluster started (or reused) by this script with initdb/pg_ctl:
#      data in ${AGENTSESSIONS_PGDATA:-${TMPDIR:-/tmp}/agentsessions-pgdata},
#      port ${AGENTSESSIONS_PGPORT:-55432}, 127.0.0.1 only, trust auth.
# --stop stops that throwaway cluster (only if this script created it).
set -euo pipefail

probe_port=${AGENTSESSIONS_PROBE_PORT:-5432}
pgdata=${AGENTSESSIONS_PGDATA:-${TMPDIR:-/tmp}/agentsessions-pgdata}
pgdata=${pgdata%/}
pgport=${AGENTSESSIONS_PGPORT:-55432}
sockdir=$pgdata.sock
marker=$pgdata/agentsessions-devdb # written after initdb: "this script owns the cluster"

log() { echo "devdb: $*" >&2; }
die() { echo "devdb: error: $*" >&2; exit 1; }

usage() { sed -n '2,3s/^# //p' "$0" >&2; exit 2; }

# answers PORT: is a PostgreSQL server accepting connections on 127.0.0.1:PORT?
answers() {
	if command -v pg_isready >/dev/null 2>&1; then
		pg_isready -q -h 127.0.0.1 -p "$1" -t 2
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# find_bin NAME: on PATH, else the newest Debian/Ubuntu install.
find_bin() {
	command -v "$1" 2>/dev/null && return
	local f
	f=$(ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1) || true
	[[ -n $f && -x $f ]] && echo "$f"
}

# as USER CMD...: run CMD as USER (initdb and pg_ctl refuse to run as root).
as() {
	local user=$1
	shift
	if [[ $user == "$(id -un)" ]]; then
		"$@"
	elif command -v runuser >/dev/null 2>&1; then
		runuser -u "$user" -- "$@"
	elif command -v setpriv >/dev/null 2>&1; then
		setpriv --reuid="$user" --regid="$(id -g "$user")" --init-groups -- "$@"
	else
		su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"
	fi
}

# cluster_user: who runs the throwaway cluster: the owner of an existing one,
# else the current user, or (as root) postgres or nobody.
cluster_user() {
	if [[ -f $pgdata/PG_VERSION ]]; then
		stat -c %U "$pgdata"
	elif [[ $(id -u) != 0 ]]; then
		id -un
	elif id postgres >/dev/null 2>&1; then
		echo postgres
	elif id nobody >/dev/null 2>&1; then
		echo nobody
	else
		die "running as root and neither user postgres nor nobody exists to run initdb"
	fi
}

stop_cluster() {
	if [[ ! -f $marker ]]; then
		log "no throwaway cluster created by this script in $pgdata; nothing to stop"
		return 0
	fi
	if [[ ! -f $pgdata/postmaster.pid ]]; then
		log "throwaway cluster in $pgdata is not running"
		return 0
	fi
	local pg_ctl
	pg_ctl=$(find_bin pg_ctl) || die "pg_ctl not found"
	log "stopping throwaway cluster in $pgdata"
	as "$(cluster_user)" "$pg_ctl" -D "$pgdata" -m fast -w stop >&2
}

start_cluster() {
	local initdb pg_ctl user
	initdb=$(find_bin initdb) && pg_ctl=$(find_bin pg_ctl) ||
		die "no PostgreSQL server on 127.0.0.1:$probe_port and initdb/pg_ctl are not installed;" \
			"start a server there, or run 'make up' (Docker)"

	if answers "$pgport"; then
		[[ -f $marker ]] || log "note: reusing a server on 127.0.0.1:$pgport that this script did not start"
		return 0
	fi
	# Serialize concurrent callers (e.g. make -j); the second one then finds the server up.
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$pgdata.lock"
		flock -w 120 9 || die "timed out waiting for $pgdata.lock"
		answers "$pgport" && return 0
	fi

	user=$(cluster_user)
	if [[ ! -f $pgdata/PG_VERSION ]]; then
		log "no server on 127.0.0.1:$probe_port; creating a throwaway cluster in $pgdata (as $user)"
		mkdir -p "$pgdata"
		[[ -z $(ls -A "$pgdata") ]] || die "$pgdata exists, is not empty and is not a cluster; remove it or set AGENTSESSIONS_PGDATA"
		chmod 700 "$pgdata"
		[[ $(id -u) != 0 ]] || chown "$user:" "$pgdata"
		as "$user" test -w "$pgdata" ||
			die "$user cannot write $pgdata (is a parent directory private?); set AGENTSESSIONS_PGDATA"
		local out
		out=$(as "$user" "$initdb" -D "$pgdata" -U postgres --auth=trust -E UTF8 --no-sync 2>&1) ||
			{ echo "$out" >&2; die "initdb failed"; }
		touch "$marker"
		[[ $(id -u) != 0 ]] || chown "$user:" "$marker"
	fi

	mkdir -p "$sockdir"
	[[ $(id -u) != 0 ]] || chown "$user:" "$sockdir"
	log "starting throwaway cluster on 127.0.0.1:$pgport (log: $pgdata/server.log)"
	# -c options rather than postgresql.conf so a reused cluster honours the current port.
	if ! as "$user" "$pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 \
		-o "-c listen_addresses=127.0.0.1 -p $pgport -c unix_socket_directories='$sockdir' -c fsync=off" \
		start >&2 9>&-; then
		tail -n 20 "$pgdata/server.log" >&2 2>/dev/null || true
		die "could not start the throwaway cluster (see $pgdata/server.log)"
	fi
}

[[ $# == 1 ]] || usage
case $1 in
--stop) stop_cluster; exit ;;
-h | --help) usage ;;
-*) usage ;;
esac
dbname=$1
[[ $dbname =~ ^[a-z0-9_]+$ ]] || die "invalid database name '$dbname' (want [a-z0-9_]+)"

if answers "$probe_port"; then
	port=$probe_port
else
	start_cluster
	port=$pgport
fi

admin=(-X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
exists() { [[ $(psql "${admin[@]}" -tAc "SELECT 1 FROM pg_database WHERE datname = '$dbname'") == 1 ]]; }
if ! command -v psql >/dev/null 2>&1; then
	log "note: psql not found; not checking that database $dbname exists"
elif ! exists; then
	log "creating database $dbname on 127.0.0.1:$port"
	# Another caller may create it at the same moment: only fail if it is still missing.
	if ! err=$(psql "${admin[@]}" -c "CREATE DATABASE \"$dbname\"" 2>&1) && ! exists; then
		echo "$err" >&2
		die "could not create database $dbname on 127.0.0.1:$port as user postgres"
	fi
fi

echo "postgres://postgres@127.0.0.1:$port/$dbname?sslmode=disable"
