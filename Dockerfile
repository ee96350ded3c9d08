# The agentsessions image: the CLI (`migrate up`, `serve`, ...) as a static
# binary on an empty base. Multi-stage: the Go builder stage compiles it, the
# final stage holds only the binary and CA certificates, running as nobody.
#
#   docker build -t agentsessions:dev .
#   docker run --rm agentsessions:dev --help
#
# GO_IMAGE picks another builder (a mirror, or a pinned digest):
#   docker build --build-arg GO_IMAGE=registry.example/golang:1.26-bookworm .
# Where no registry can be reached, scripts/containers.sh app-image builds the
# same final stage from a host-built binary (deploy/Dockerfile.local).
ARG GO_IMAGE=golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
# The CLI is its own module (cmd/go.mod), on the library through a replace
# directive; go.work is for development and is not copied in.
COPY go.mod go.sum ./
COPY cmd/go.mod cmd/go.sum ./cmd/
RUN cd cmd && go mod download
COPY . .
RUN cd cmd && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/agentsessions ./agentsessions

# Keep this stage identical to deploy/Dockerfile.local.
FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/agentsessions /agentsessions
USER 65534:65534
EXPOSE 8080
ENTRYPOINT ["/agentsessions"]
