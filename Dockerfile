# One image for every Keel process of the distributed deployment (docker-compose.yml):
# the `keel` CLI (gateway, relay, events API, migrate) and the three example services.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p keel -p keel-users -p keel-products -p keel-orders \
 && mkdir -p /out \
 && cp target/release/keel target/release/keel-users target/release/keel-products target/release/keel-orders /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
COPY deploy/gateway.toml /etc/keel/gateway.toml
ENV RUST_LOG=info
USER nobody
ENTRYPOINT []
CMD ["keel", "--help"]
