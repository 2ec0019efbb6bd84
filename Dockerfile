# roomcast container image.
#
#   docker build -t roomcast .
#   docker run -p 8000:8000 -e SECRET_KEY=$(openssl rand -hex 32) roomcast
#                                             # SQLite + in-process broker
#
# The image listens on 0.0.0.0, so it refuses to start without a SECRET_KEY.
#
# The build uses BuildKit cache mounts (the default builder of current Docker
# and Docker Compose) so that dependencies are compiled once and reused by
# later builds; only the workspace's own crates are rebuilt after a change.

# ---- build ------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p api --bin roomcast \
 && install -D -m 0755 target/release/roomcast /out/roomcast

# ---- runtime ----------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# An unprivileged user; its home is the working directory, so the default
# SQLite database (roomcast.db) lands there when DATABASE_URL is unset.
RUN groupadd --system --gid 10001 roomcast \
 && useradd --system --uid 10001 --gid roomcast --create-home \
      --home-dir /var/lib/roomcast --shell /usr/sbin/nologin roomcast

COPY --from=builder /out/roomcast /usr/local/bin/roomcast

WORKDIR /var/lib/roomcast
USER 10001:10001
ENV BIND=0.0.0.0:8000
EXPOSE 8000

# Liveness over plain bash (no curl in the slim image): GET /healthz on the
# port from BIND and expect a 200 status line.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD bash -c 'exec 3<>/dev/tcp/127.0.0.1/${BIND##*:} && printf "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3 && read -r _ code _ <&3 && [ "$code" = 200 ]'

ENTRYPOINT ["/usr/local/bin/roomcast"]
