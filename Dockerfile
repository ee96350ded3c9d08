# Image for the agentsessions CLI (e.g. `migrate up`); used by docker-compose.yml.
ARG GO_IMAGE=golang:1.26-bookworm

FROM ${GO_IMAGE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/agentsessions ./cmd/agentsessions

FROM scratch
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/agentsessions /agentsessions
USER 65534:65534
ENTRYPOINT ["/agentsessions"]
