#!/usr/bin/env bash
# Usage: scripts/containers.sh prepare [postgres] [lb]  engine + images (default both); prints exports
#        scripts/containers.sh test [FLAGS]  integration tests on PostgreSQL from testcontainers (make test-containers)
#        scripts/containers.sh engine        only make sure a Docker engine answers
#        scripts/containers.sh app-image     build the agentsessions image from a host-built static binary
#        scripts/containers.sh compose ARGS  run `docker compose` (v2), else `docker-compose` (v1)
#        scripts/containers.sh up [SERVICE]  images + `compose up -d --no-build`; waits for migrate
#        scripts/containers.sh down          `compose down -v` (containers, network, data volume)
#        scripts/containers.sh stop-engine   stop a dockerd that this script started
#
# Makes the container paths (testcontainers tests, docker-compose.yml) work on
# a machine that has no Docker engine running and may reach no image registry,
# and does nothing special where Docker works normally. Idempotent: a second
# run reuses the engine and the images. Logs go to stderr.
#
# prepare prints `export NAME=VALUE` lines for the images to use (eval them):
#   AGENTSESSIONS_POSTGRES_IMAGE  read by internal/testdb and docker-compose.yml
#   AGENTSESSIONS_LB_IMAGE        the load balancer (nginx) in docker-compose.yml
#   TESTCONTAINERS_RYUK_DISABLED=true, only when local images are in use (no
#                                 registry, so no reaper image) and it is unset
#   TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1, only when it is unset, this
#                                 machine looks like a container (/.dockerenv) to
#                                 testcontainers, yet dockerd runs right here: its
#                                 published ports are on loopback, not behind the
#                                 bridge gateway testcontainers would dial
# Each image variable, when already set, is used as it is (pulled if absent).
# Otherwise the official image (postgres:16-alpine, nginx:1.27-alpine) if
# present or pullable, else an image built here once from Debian packages with
# debootstrap (no registry needed) and reused: agentsessions-local/postgres and
# agentsessions-local/nginx, tagged with a hash of their recipe.
# AGENTSESSIONS_LOCAL_IMAGES=1 skips the pull and builds/reuses the local
# images; =0 never builds them.
#
# Engine: if `docker info` fails, dockerd is installed (Debian's docker.io, as
# root with apt-get) when missing and started in the background, logging to
# ${AGENTSESSIONS_DOCKERD_LOG:-/var/log/agentsessions-dockerd.log}.
# Exit status 3 means no engine can be had here; stdout then holds one line,
# the reason. Any other failure is a real one (status 1).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

OFFICIAL_POSTGRES_IMAGE=postgres:16-alpine
OFFICIAL_LB_IMAGE=nginx:1.27-alpine
LOCAL_POSTGRES_REPO=agentsessions-local/postgres
LOCAL_LB_REPO=agentsessions-local/nginx
SUITE=${AGENTSESSIONS_DEBIAN_SUITE:-bookworm}
STATE_DIR=${AGENTSESSIONS_CONTAINERS_STATE:-/var/tmp/agentsessions-containers}
DOCKERD_LOG=${AGENTSESSIONS_DOCKERD_LOG:-/var/log/agentsessions-dockerd.log}
DOCKERD_PIDFILE=$STATE_DIR/dockerd.pid # written only when this script starts dockerd

log() { echo "containers: $*" >&2; }
die() {
	echo "containers: error: $*" >&2
	exit 1
}
# unavailable REASON: no engine here; the caller decides whether that is a skip.
unavailable() {
	echo "containers: no Docker engine: $*" >&2
	echo "$*"
	exit 3
}

usage() {
	sed -n '2,9s/^# //p' "$0" >&2
	exit 2
}

engine_up() { timeout 20 docker info >/dev/null 2>&1; }

as_root() {
	if [[ $(id -u) == 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
		sudo -n "$@"
	else
		return 1
	fi
}

apt_install() {
	command -v apt-get >/dev/null 2>&1 || return 1
	log "installing $* with apt-get"
	local out
	export DEBIAN_FRONTEND=noninteractive
	if ! out=$(as_root timeout 900 apt-get install -y -q --no-install-recommends "$@" 2>&1); then
		# The package lists may be missing or stale on a new machine.
		as_root timeout 300 apt-get update -q >&2 || true
		out=$(as_root timeout 900 apt-get install -y -q --no-install-recommends "$@" 2>&1) || {
			echo "$out" | tail -n 20 >&2
			return 1
		}
	fi
	echo "$out" | tail -n 1 >&2
}

# with_lock CMD...: CMD in a subshell holding the lock: one preparer at a
# time (make -j, several terminals).
with_lock() {
	mkdir -p "$STATE_DIR"
	(
		exec 8>"$STATE_DIR/lock"
		flock -w 900 8 || die "timed out waiting for $STATE_DIR/lock"
		"$@"
	)
}

ensure_engine() {
	if ! command -v docker >/dev/null 2>&1; then
		[[ ${AGENTSESSIONS_INSTALL_DOCKER:-1} == 1 ]] ||
			unavailable "no docker command and AGENTSESSIONS_INSTALL_DOCKER=0"
	elif engine_up; then
		return 0
	fi
	if ! command -v dockerd >/dev/null 2>&1; then
		[[ ${AGENTSESSIONS_INSTALL_DOCKER:-1} == 1 ]] ||
			unavailable "no Docker engine answers and dockerd is not installed (AGENTSESSIONS_INSTALL_DOCKER=0)"
		as_root true 2>/dev/null ||
			unavailable "no Docker engine answers, dockerd is not installed, and installing it needs root"
		apt_install docker.io iptables ||
			unavailable "no Docker engine answers and 'apt-get install docker.io' failed"
		# The package may have started its own service.
		if engine_up; then
			log "engine started by the docker.io package"
			return 0
		fi
	fi
	[[ $(id -u) == 0 ]] || unavailable "dockerd is installed but not running, and starting it needs root"
	local pid
	if [[ -f $DOCKERD_PIDFILE ]] && pid=$(<"$DOCKERD_PIDFILE") && kill -0 "$pid" 2>/dev/null; then
		log "dockerd (pid $pid) is starting; waiting for it"
	else
		log "starting dockerd in the background (log: $DOCKERD_LOG)"
		mkdir -p "$(dirname "$DOCKERD_LOG")"
		# setsid: the engine outlives this script and ignores the caller's ^C.
		# 8>&-: it must not hold our lock.
		setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null 8>&- &
		pid=$!
		echo "$pid" >"$DOCKERD_PIDFILE"
	fi
	local i
	for ((i = 0; i < 120; i++)); do
		if engine_up; then
			log "engine up after ~$((i / 2))s: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}' 2>/dev/null)"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			tail -n 15 "$DOCKERD_LOG" >&2 || true
			rm -f "$DOCKERD_PIDFILE"
			unavailable "dockerd exited at start: $(grep -E 'level=(fatal|error)|failed' "$DOCKERD_LOG" | tail -n 1 | cut -c1-300)"
		fi
		sleep 0.5
	done
	tail -n 15 "$DOCKERD_LOG" >&2 || true
	unavailable "dockerd (pid $pid) did not answer within 60s (log: $DOCKERD_LOG)"
}

stop_engine() {
	local pid
	if [[ ! -f $DOCKERD_PIDFILE ]]; then
		log "no dockerd started by this script; nothing to stop"
		return 0
	fi
	pid=$(<"$DOCKERD_PIDFILE")
	if kill -0 "$pid" 2>/dev/null; then
		log "stopping dockerd (pid $pid)"
		kill "$pid"
		local i
		for ((i = 0; i < 60; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.5
		done
	fi
	rm -f "$DOCKERD_PIDFILE"
}

# compose_cmd: prints the compose command line that works here.
compose_cmd() {
	if docker compose version >/dev/null 2>&1; then
		echo "docker compose"
	elif command -v docker-compose >/dev/null 2>&1; then
		echo docker-compose
	else
		return 1
	fi
}

ensure_compose() {
	compose_cmd >/dev/null && return 0
	# Debian bookworm has no compose v2 plugin; its docker-compose (v1.29)
	# reads the same file.
	apt_install docker-compose ||
		die "neither 'docker compose' nor 'docker-compose' is available, and 'apt-get install docker-compose' failed"
	compose_cmd >/dev/null || die "docker-compose was installed but does not run"
}

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

try_pull() {
	log "pulling $1"
	timeout 300 docker pull -q "$1" >&2 2>&1
}

debian_mirror() {
	if [[ -n ${AGENTSESSIONS_DEBIAN_MIRROR:-} ]]; then
		echo "$AGENTSESSIONS_DEBIAN_MIRROR"
		return
	fi
	local m
	# deb822 (URIs: ...) or one-line (deb URI suite ...) sources; the main archive, not -security.
	m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
		sed -nE 's/^[[:space:]]*(URIs:|deb([[:space:]]+\[[^]]*\])?)[[:space:]]+([^[:space:]]+).*/\3/p' |
		grep -E '/debian/?$' | head -n 1) || true
	echo "${m:-http://deb.debian.org/debian}"
}

# recipe_tag REPO: a tag that changes when the recipe does (the lines between
# the two markers below, and the entrypoint), so a changed recipe gives a new
# image instead of a stale one.
recipe_tag() {
	local h
	h=$({ sed -n '/^#-- recipe begin/,/^#-- recipe end/p' "$0"; cat deploy/local-images/postgres-entrypoint.sh; } |
		sha256sum | cut -c1-10)
	echo "$1:$SUITE-$h"
}

# debootstrap_rootfs DIR PACKAGES: a minimal Debian tree with PACKAGES.
debootstrap_rootfs() {
	local dir=$1 pkgs=$2 mirror out
	command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap ||
		die "debootstrap is needed to build images locally and could not be installed"
	mirror=$(debian_mirror)
	log "debootstrap $SUITE ($pkgs) from $mirror into $dir"
	local try
	for try in 1 2; do # a second try for a mirror's bad moment
		rm -rf "$dir"
		mkdir -p "$dir"
		if out=$(timeout 900 debootstrap --variant=minbase --include="$pkgs" "$SUITE" "$dir" "$mirror" 2>&1); then
			break
		fi
		echo "$out" | tail -n 20 >&2
		[[ $try == 1 ]] || die "debootstrap failed twice (log: $dir/debootstrap/debootstrap.log)"
		log "debootstrap failed; trying once more in 10s"
		sleep 10
	done
	# A package's postinst may have started a daemon inside the tree: stop it.
	local p root
	root=$(realpath "$dir")
	for p in /proc/[0-9]*; do
		if [[ $(readlink "$p/root" 2>/dev/null) == "$root" ]]; then
			log "stopping process ${p#/proc/} left running in the tree by a package script"
			kill "${p#/proc/}" 2>/dev/null || true
		fi
	done
	# Slimmer image: no package caches or lists.
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* "$dir"/debootstrap
}

# import_rootfs DIR TAG CHANGES...: DIR as a one-layer image (no registry).
import_rootfs() {
	local dir=$1 tag=$2
	shift 2
	local changes=() c
	for c in "$@"; do changes+=(-c "$c"); done
	log "importing $dir as $tag"
	tar --numeric-owner -C "$dir" --exclude=./.agentsessions-rootfs -c . |
		docker import "${changes[@]}" - "$tag" >/dev/null
	drop_older "$tag"
}

# drop_older TAG: older builds of the same recipe are no longer used.
drop_older() {
	docker image ls --format '{{.Repository}}:{{.Tag}}' "${1%%:*}" | grep -vxF "$1" |
		xargs -r docker image rm >/dev/null 2>&1 || true
}

#-- recipe begin (these lines and the entrypoint make the local images' tags)
# Both local images come from one Debian tree: one debootstrap (~50 s) instead
# of two. Imported twice with different settings.
LOCAL_PACKAGES=postgresql-15,nginx-light
LOCAL_ROOTFS=$STATE_DIR/rootfs-local

local_rootfs() {
	local dir=$LOCAL_ROOTFS
	[[ -f $dir/.agentsessions-rootfs ]] && return 0
	debootstrap_rootfs "$dir" "$LOCAL_PACKAGES"
	# PostgreSQL: the package's own cluster and config are not used; the
	# entrypoint makes one in PGDATA as the official image does.
	rm -rf "$dir"/var/lib/postgresql/15/main "$dir"/etc/postgresql/15/main
	install -m 0755 deploy/local-images/postgres-entrypoint.sh "$dir"/usr/local/bin/docker-entrypoint.sh
	install -d -o "$(stat -c %u "$dir"/var/lib/postgresql)" -g "$(stat -c %g "$dir"/var/lib/postgresql)" \
		-m 0700 "$dir"/var/lib/postgresql/data
	# nginx: logs to the container's output, as in the official image.
	ln -sf /dev/stdout "$dir"/var/log/nginx/access.log
	ln -sf /dev/stderr "$dir"/var/log/nginx/error.log
	touch "$dir"/.agentsessions-rootfs
}

build_local_postgres() {
	local_rootfs
	import_rootfs "$LOCAL_ROOTFS" "$1" \
		'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		'ENV LANG=C.UTF-8' \
		'ENV PGDATA=/var/lib/postgresql/data' \
		'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' \
		'CMD ["postgres"]' \
		'EXPOSE 5432'
}

build_local_lb() {
	local pg
	pg=$(recipe_tag "$LOCAL_POSTGRES_REPO")
	if have_image "$pg"; then
		# Same tree: a new image config on the same layer (~1 s, no import).
		log "building $1 from $pg"
		printf '%s\n' "FROM $pg" 'ENTRYPOINT []' 'CMD ["nginx", "-g", "daemon off;"]' 'EXPOSE 80' |
			docker build -q -t "$1" - >/dev/null 2>&1 || die "docker build of $1 failed"
		drop_older "$1"
		return
	fi
	local_rootfs
	import_rootfs "$LOCAL_ROOTFS" "$1" \
		'ENV LANG=C.UTF-8' \
		'CMD ["nginx", "-g", "daemon off;"]' \
		'EXPOSE 80'
}
#-- recipe end

# pick_image VAR OFFICIAL LOCAL_REPO BUILD_FN: prints the image to use for VAR.
pick_image() {
	local var=$1 official=$2 repo=$3 build=$4
	local want=${!var:-} mode=${AGENTSESSIONS_LOCAL_IMAGES:-auto} tag
	if [[ -n $want ]]; then
		have_image "$want" || try_pull "$want" || die "$var=$want: image not present and cannot be pulled"
		echo "$want"
		return
	fi
	tag=$(recipe_tag "$repo")
	if [[ $mode != 1 ]] && have_image "$official"; then
		echo "$official"
	elif [[ $mode != 0 ]] && have_image "$tag"; then
		log "reusing $tag"
		echo "$tag"
	elif [[ $mode == auto ]] && try_pull "$official"; then
		echo "$official"
	elif [[ $mode == 0 ]]; then
		die "$official is not present and cannot be pulled (AGENTSESSIONS_LOCAL_IMAGES=0: not building one)"
	else
		[[ $mode == 1 ]] || log "$official cannot be pulled; building $tag from Debian packages instead (once)"
		local start=$SECONDS
		"$build" "$tag"
		log "built $tag in $((SECONDS - start))s"
		echo "$tag"
	fi
}

prepare() {
	local want_pg=false want_lb=false a
	[[ $# -gt 0 ]] || set -- postgres lb
	for a in "$@"; do
		case $a in
		postgres) want_pg=true ;;
		lb) want_lb=true ;;
		*) usage ;;
		esac
	done
	ensure_engine
	local images=() line
	if $want_pg; then
		line=$(pick_image AGENTSESSIONS_POSTGRES_IMAGE "$OFFICIAL_POSTGRES_IMAGE" "$LOCAL_POSTGRES_REPO" build_local_postgres)
		images+=("AGENTSESSIONS_POSTGRES_IMAGE=$line")
	fi
	if $want_lb; then
		line=$(pick_image AGENTSESSIONS_LB_IMAGE "$OFFICIAL_LB_IMAGE" "$LOCAL_LB_REPO" build_local_lb)
		images+=("AGENTSESSIONS_LB_IMAGE=$line")
	fi
	# The tree is only needed to build the images; rebuilding takes ~50 s.
	rm -rf "$LOCAL_ROOTFS"
	for line in "${images[@]}"; do
		log "${line%%=*}: ${line#*=}"
		printf 'export %s=%q\n' "${line%%=*}" "${line#*=}"
	done
	if [[ -z ${TESTCONTAINERS_HOST_OVERRIDE:-} && -f /.dockerenv && ${DOCKER_HOST:-unix://} == unix://* ]] &&
		pidof dockerd >/dev/null 2>&1; then
		log "/.dockerenv here but dockerd runs on this machine: TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1"
		echo "export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1"
	fi
	# testcontainers' reaper (Ryuk) comes from a registry too. Without it the
	# harness still stops its containers at the end of each test binary
	# (testdb.Main); only a crashed binary leaves one behind.
	if [[ -z ${TESTCONTAINERS_RYUK_DISABLED:-} && ${images[*]} == *=agentsessions-local/* ]] &&
		! docker image ls --format '{{.Repository}}' | grep -qx 'testcontainers/ryuk'; then
		log "local images in use and no testcontainers/ryuk image here: TESTCONTAINERS_RYUK_DISABLED=true"
		echo "export TESTCONTAINERS_RYUK_DISABLED=true"
	fi
}

# run_tests GOFLAGS...: every package whose tests use internal/testdb, with
# TEST_DATABASE_URL unset, so each test binary starts its own PostgreSQL
# container through testcontainers-go. Proves it: each package must report a
# container in AGENTSESSIONS_TESTDB_LOG. Containers a binary left behind are
# removed (and named).
run_tests() {
	[[ $# -gt 0 ]] || set -- -race -count=1
	local exports
	exports=$(with_lock prepare postgres) || return
	eval "$exports"
	local pkgs=() p
	while read -r p; do pkgs+=("$p"); done < <(go list -f \
		'{{.ImportPath}}{{range .TestImports}} {{.}}{{end}}{{range .XTestImports}} {{.}}{{end}}' ./... ./cmd/... |
		awk '/ github.com\/agentsessions\/agentsessions\/internal\/testdb( |$)/ {print $1}')
	[[ ${#pkgs[@]} -gt 0 ]] || die "no package's tests use internal/testdb"
	local report before rc=0
	report=$(mktemp)
	before=$(docker ps -aq --filter label=org.testcontainers=true | sort)
	log "TEST_DATABASE_URL unset; AGENTSESSIONS_POSTGRES_IMAGE=$AGENTSESSIONS_POSTGRES_IMAGE; packages: ${pkgs[*]#github.com/agentsessions/agentsessions/}"
	(
		set -x
		env -u TEST_DATABASE_URL AGENTSESSIONS_TESTDB_LOG="$report" go test "$@" "${pkgs[@]}"
	) || rc=$?
	echo "testdb reports (one per test binary):" >&2
	sed 's/^/  /' "$report" >&2
	local leftover=()
	mapfile -t leftover < <(comm -13 <(echo "$before") <(docker ps -aq --filter label=org.testcontainers=true | sort))
	if [[ ${#leftover[@]} -gt 0 ]]; then
		log "warning: removing containers the tests left behind: ${leftover[*]}"
		docker rm -f "${leftover[@]}" >/dev/null || true
	fi
	if grep -q ' TEST_DATABASE_URL ' "$report"; then
		log "error: a test binary used TEST_DATABASE_URL instead of a container"
		rc=1
	fi
	for p in "${pkgs[@]}"; do
		if ! grep -q "^${p##*/}.test container " "$report"; then
			log "error: package $p started no PostgreSQL container"
			rc=1
		fi
	done
	rm -f "$report"
	[[ $rc == 0 ]] && log "OK: ${#pkgs[@]} packages ran on PostgreSQL containers from $AGENTSESSIONS_POSTGRES_IMAGE"
	return "$rc"
}

# app_image: the agentsessions image from deploy/Dockerfile.local: a static
# binary built here with the host's Go, in an image FROM scratch (no base
# image to pull). Elsewhere `docker build .` builds the same from source.
app_image() {
	local image=${AGENTSESSIONS_IMAGE:-agentsessions:dev} arch out=bin/docker
	arch=$(docker version --format '{{.Server.Arch}}')
	mkdir -p "$out"
	log "building $out/agentsessions (linux/$arch, static)"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags='-s -w' -o "$out"/agentsessions ./cmd/agentsessions
	if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
		cp /etc/ssl/certs/ca-certificates.crt "$out"/ca-certificates.crt
	else
		log "warning: no /etc/ssl/certs/ca-certificates.crt here: the image will not verify TLS servers"
		: >"$out"/ca-certificates.crt
	fi
	log "docker build -f deploy/Dockerfile.local -t $image $out"
	# The classic builder (no buildx needed) warns that it is deprecated;
	# its output is shown only when the build fails.
	local blog
	if ! blog=$(docker build -q -f deploy/Dockerfile.local -t "$image" "$out" 2>&1); then
		echo "$blog" >&2
		die "docker build failed"
	fi
	echo "$image"
}

compose() {
	local c
	c=$(compose_cmd) || die "no compose command"
	$c "$@"
}

# up SERVICE...: docker-compose.yml's SERVICEs (default all) with the images
# from prepare and the app image (AGENTSESSIONS_IMAGE when set, else
# app_image from the current source), detached; then waits for the one-shot
# migrate job (when started) and fails with its log if it failed.
up() {
	local exports image
	exports=$(with_lock prepare) || return
	eval "$exports"
	if [[ -n ${AGENTSESSIONS_IMAGE:-} ]]; then
		# A given image (a release, or one built by `docker build .`) as it is.
		have_image "$AGENTSESSIONS_IMAGE" || try_pull "$AGENTSESSIONS_IMAGE" ||
			die "AGENTSESSIONS_IMAGE=$AGENTSESSIONS_IMAGE: image not present and cannot be pulled"
		log "app image: $AGENTSESSIONS_IMAGE (given; not rebuilt)"
	else
		image=$(with_lock app_image)
		export AGENTSESSIONS_IMAGE=$image
	fi
	with_lock ensure_compose
	log "$(compose_cmd) up -d --no-build $*"
	compose up -d --no-build "$@" >&2
	if [[ $# -eq 0 || " $* " == *" migrate "* ]]; then
		local cid rc
		cid=$(compose ps -a -q migrate)
		[[ -n $cid ]] || die "no migrate container"
		rc=$(docker wait "$cid")
		if [[ $rc != 0 ]]; then
			compose logs --no-color migrate >&2 || true
			die "migrate exited with status $rc"
		fi
		log "migrations applied"
	fi
}

[[ $# -ge 1 ]] || usage
cmd=$1
shift
case $cmd in
prepare) with_lock prepare "$@" ;;
test) run_tests "$@" ;;
engine) with_lock ensure_engine ;;
app-image)
	with_lock ensure_engine
	with_lock app_image
	;;
compose)
	with_lock ensure_compose
	c=$(compose_cmd)
	exec $c "$@"
	;;
up) up "$@" ;;
down)
	with_lock ensure_compose
	compose down -v --remove-orphans "$@"
	;;
stop-engine) stop_engine ;;
*) usage ;;
esac
