# The image of a longshore service binary: built in one stage, run as non-root in a
# minimal one. Build one of the examples (or your own service in this workspace):
#   docker build --build-arg SERVICE=quickstart -t orders-consumer .
# The chart starts it as `<binary> --config /etc/longshore/config.json`.

FROM rust:1.95-bookworm AS build
# librdkafka is built from source by rdkafka-sys: it needs cmake and a C++ compiler, and
# OpenSSL's headers with pkg-config (in this image already) for TLS and SASL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG SERVICE=quickstart
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p "${SERVICE}" \
    && cp "target/release/${SERVICE}" /service

# glibc and CA certificates, no shell, user 65532: matches the chart's securityContext.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /service /usr/local/bin/service
USER 65532:65532
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/service"]
