# respite: build with the Rust toolchain, run on a slim Debian.
#   docker build -t respite .
#   docker run -p 6380:6380 -v $PWD/config:/etc/respite respite \
#       --config /etc/respite/respite.example.toml --listen 0.0.0.0:6380 \
#       --upstream redis://redis:6379
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin respite

FROM debian:bookworm-slim
RUN useradd --system --no-create-home respite
COPY --from=build /src/target/release/respite /usr/local/bin/respite
COPY config/respite.example.toml /etc/respite/respite.toml
USER respite
EXPOSE 6380
ENTRYPOINT ["/usr/local/bin/respite"]
CMD ["--config", "/etc/respite/respite.toml", "--listen", "0.0.0.0:6380"]
