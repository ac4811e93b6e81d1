# syntax=docker/dockerfile:1
# Build:  docker build -t commissions .
# Run:    docker compose up   (PostgreSQL + the service on :5000)

FROM rust:1-bookworm AS builder
WORKDIR /src
# Queries are checked against the committed .sqlx/ data, not a live database.
ENV SQLX_OFFLINE=true
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin commissions \
    && cp target/release/commissions /usr/local/bin/commissions

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin commissions
COPY --from=builder /usr/local/bin/commissions /usr/local/bin/commissions
USER commissions
ENV BIND_ADDR=0.0.0.0:5000 \
    RUST_LOG=info
EXPOSE 5000
CMD ["commissions", "serve"]
