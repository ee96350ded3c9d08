#!/bin/bash
# Entrypoint of the PostgreSQL image that scripts/containers.sh builds locally
# (Debian bookworm, debootstrap) where no registry can be reached. A small
# stand-in for the official image's docker-entrypoint.sh, honouring the same
# variables: POSTGRES_USER (default postgres), POSTGRES_PASSWORD,
# POSTGRES_DB (default POSTGRES_USER), POSTGRES_HOST_AUTH_METHOD (default
# scram-sha-256), POSTGRES_INITDB_ARGS, PGDATA, and *.sql / *.sh files in
# /docker-entrypoint-initdb.d.
#
# Like the official image, a new cluster is initialised by a temporary
# server listening on the Unix socket only; the real server then starts with
# listen_addresses='*'. So the log says "database system is ready to accept
# connections" twice, which is what testcontainers' postgres module waits for.
set -euo pipefail

# shellcheck disable=SC2012 # version-numbered directories
bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
export PATH="$bindir:$PATH"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

log() { echo "entrypoint: $*" >&2; }

# `docker run IMAGE -c x=y` means `postgres -c x=y`, as in the official image.
if [[ ${1:-} == -* ]]; then
	set -- postgres "$@"
fi
if [[ ${1:-} != postgres ]]; then
	exec "$@"
fi

if [[ $(id -u) == 0 ]]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	chmod 2775 /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups -- "${BASH_SOURCE[0]}" "$@"
fi

if [[ ! -s $PGDATA/PG_VERSION ]]; then
	user=${POSTGRES_USER:-postgres}
	db=${POSTGRES_DB:-$user}
	auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
	if [[ -z ${POSTGRES_PASSWORD:-} && $auth != trust ]]; then
		log "error: the database is uninitialized and POSTGRES_PASSWORD is not set;"
		log "set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust (no password: for local tests only)"
		exit 1
	fi
	log "initialising a new cluster in $PGDATA (user $user, database $db, host auth $auth)"
	pwargs=() pwfile=
	if [[ -n ${POSTGRES_PASSWORD:-} ]]; then
		# A private file, not a pipe: initdb cannot read /dev/fd here.
		pwfile=$(mktemp)
		printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
		pwargs=(--pwfile="$pwfile")
	fi
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as in the official image
	initdb --username="$user" "${pwargs[@]}" --auth-local=trust --auth-host="$auth" \
		--encoding=UTF8 ${POSTGRES_INITDB_ARGS:-} >&2
	[[ -z $pwfile ]] || rm -f "$pwfile"
	{
		echo
		echo "# Added by the container entrypoint: any address may connect, with $auth."
		echo "host all all all $auth"
	} >>"$PGDATA/pg_hba.conf"
	echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"

	# Temporary server: Unix socket only, so nobody connects before we are done.
	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w -t 60 start >&2
	psql=(psql -X -v ON_ERROR_STOP=1 --username "$user" --no-password)
	if [[ $db != postgres ]]; then
		"${psql[@]}" --dbname postgres --set db="$db" <<-'SQL'
			CREATE DATABASE :"db";
		SQL
	fi
	shopt -s nullglob
	for f in /docker-entrypoint-initdb.d/*; do
		case $f in
		*.sh)
			log "running $f"
			# shellcheck disable=SC1090 # the image user's own init scripts
			. "$f"
			;;
		*.sql) log "running $f"; "${psql[@]}" --dbname "$db" -f "$f" ;;
		*) log "ignoring $f" ;;
		esac
	done
	shopt -u nullglob
	pg_ctl -D "$PGDATA" -m fast -w stop >&2
	log "init done; starting the server"
fi

exec "$@"
