# syntax=docker/dockerfile:1
# Strata's image: built in one stage, run in a small non-root one.
#   docker build -t strata:local .
#   docker run -p 127.0.0.1:18080:8080 strata:local   # the embedded default (SQLite)

FROM rust:1.95-bookworm AS build
# gcc, g++, make and zlib build the vendored librdkafka of the Kafka bus.
RUN apt-get update && apt-get install -y --no-install-recommends g++ make zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The crates.io downloads and the target directory live in BuildKit caches:
# a change to Strata's sources rebuilds Strata's crates, not its ~400
# dependencies (a clean release build takes ~16 minutes on two cores).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p strata-api && cp target/release/strata /usr/local/bin/strata

FROM debian:bookworm-slim
# curl answers the health check.
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/strata --create-home strata
COPY --from=build /usr/local/bin/strata /usr/local/bin/strata
USER strata
WORKDIR /var/lib/strata
ENV STRATA_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=12 CMD ["curl", "-fsS", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["strata"]
CMD ["serve"]
