# syntax=docker/dockerfile:1
# The `order` service of the sample order app. Build from the repository root:
#   docker build -f apps/order-app/docker/order.Dockerfile -t ghcr.io/meshwasm/order:0.1.0 .

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Cargo loads the whole workspace, so every member's sources come along;
# only the app's crate is compiled.
COPY Cargo.toml Cargo.lock ./
COPY filters filters
COPY integration integration
COPY apps apps
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p order-app --bin order \
 && install -D target/release/order /out/order

# glibc + libgcc only, no shell; the same Debian release as the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/order /usr/local/bin/order
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/order"]
