# syntax=docker/dockerfile:1
# The cue relay image: build with `docker build -t cue-relay .`, see docs/deploy.md.

# Build stage. bookworm matches the runtime's Debian 12, so the binary never needs a
# newer glibc than the runtime has.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
# Only the relay is built; the registry cache speeds up rebuilds without entering the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked -p cue-relay

# Runtime stage: distroless (no shell, no package manager), running as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /src/target/release/cue-relay /usr/local/bin/cue-relay
ENV CUE_RELAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
USER 65532:65532
# There is no curl in the image: the relay checks itself (GET /healthz). `cue-relay
# healthcheck` finds the address as the server does: from the server's own command line
# (it is process 1 here, so `docker run cue-relay --listen 0.0.0.0:9000` is checked on
# 9000) or CUE_RELAY_LISTEN; `healthcheck --listen HOST:PORT` or `--url URL` override it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/cue-relay", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/cue-relay"]
