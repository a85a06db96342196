# syntax=docker/dockerfile:1

# Build a static server binary. The cache mounts keep downloaded modules and
# compiled packages between builds.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
# With -buildvcs=false a .git directory in the build context that git in the
# container cannot read does not fail the build.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false -ldflags='-s -w' \
    -o /out/server ./cmd/server

# Run it as an unprivileged user. CA certificates are for TLS connections to
# PostgreSQL (sslmode=verify-full) and RabbitMQ (amqps://).
FROM alpine:3.22
RUN apk add --no-cache ca-certificates \
    && adduser -D -H -u 10001 messaging
COPY --from=build /out/server /usr/local/bin/server
USER 10001
EXPOSE 8080
# No -dev here: the container needs JWT_SECRET, and the server exits with an
# error without it.
ENTRYPOINT ["/usr/local/bin/server"]
