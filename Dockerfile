# respite: build with the Rust toolchain, run on a slim Debian as a non-root user.
#   docker build -t respite .
#   docker run -p 6380:6380 -v $PWD/my.toml:/etc/respite/respite.toml:ro respite \
#       --config /etc/respite/respite.toml --listen 0.0.0.0:6380 --upstream redis://redis:6379
# deploy/compose.yaml (Redis + respite) and deploy/kubernetes/sidecar.yaml use this image;
# see "Deployment" in the README.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# benches/ too: Cargo.toml declares the `paced` bench, and cargo reads every target's path.
COPY benches ./benches
COPY src ./src
RUN cargo build --release --locked --bin respite

FROM debian:bookworm-slim
# The public CAs: a rediss:// upstream without ca_file (a managed Redis) is trusted through
# the system's store, which the slim image lacks.
# A fixed numeric uid/gid, so that Kubernetes' runAsNonRoot can see it is not root (a user
# name cannot be checked) and mounted secrets can be made readable to it (fsGroup).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 respite \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin respite
COPY --from=build /src/target/release/respite /usr/local/bin/respite
COPY config/respite.example.toml /etc/respite/respite.toml
USER 10001:10001
# 6380: Redis clients; 9121: the admin listener (/healthz, /readyz, /metrics, POST /reload),
# when [admin] listen is 0.0.0.0:9121 rather than the example's 127.0.0.1.
EXPOSE 6380 9121
# respite asks its own admin listener (no curl in the image): /healthz, 200 while the
# process serves. The config must have an [admin] listen (the example's has); one at another
# path is named with `--health-cmd` (docker run) or `healthcheck:` (Compose).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/respite", "healthcheck", "--config", "/etc/respite/respite.toml"]
ENTRYPOINT ["/usr/local/bin/respite"]
CMD ["--config", "/etc/respite/respite.toml", "--listen", "0.0.0.0:6380"]
