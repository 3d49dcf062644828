# syntax=docker/dockerfile:1
# The Tollgate image: one binary, /usr/local/bin/tollgate, for every way of running it:
#   tollgate serve --config FILE [--target all|rest|inference|catalog|billing]
#   tollgate migrate --config FILE
# The configuration is /etc/tollgate/tollgate.toml (the example config; mount your own there, or
# point TOLLGATE_CONFIG or --config elsewhere); TOLLGATE__SECTION__KEY variables override it.
# The default command serves the monolith on 0.0.0.0, with SQLite under /var/lib/tollgate.
#
#   docker build -t tollgate:0.1.0 .
#   docker run -p 8080:8080 -p 50051:50051 -e DEEPSEEK_API_KEY tollgate:0.1.0
#
# k8s/ runs this image read-only as uid 10001 with its own args (see README, "Deploying on
# Kubernetes").

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
    && install -D -m 0755 target/release/tollgate /out/tollgate

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/tollgate --shell /usr/sbin/nologin tollgate \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/tollgate \
    && install -d -m 0755 /etc/tollgate
COPY --from=build /out/tollgate /usr/local/bin/tollgate
COPY examples/tollgate.toml /etc/tollgate/tollgate.toml
ENV TOLLGATE_CONFIG=/etc/tollgate/tollgate.toml
WORKDIR /var/lib/tollgate
USER 10001:10001
# REST, public gRPC, internal gRPC (billing's Metering), metrics and health of the gRPC targets.
EXPOSE 8080 50051 50052 9090
ENTRYPOINT ["/usr/local/bin/tollgate"]
CMD ["serve", "--http-addr", "0.0.0.0:8080", "--grpc-addr", "0.0.0.0:50051"]
