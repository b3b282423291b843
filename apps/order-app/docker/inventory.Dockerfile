# syntax=docker/dockerfile:1
# The `inventory` service of the sample order app. Build from the repository root:
#   docker build -f apps/order-app/docker/inventory.Dockerfile -t ghcr.io/meshwasm/inventory:0.1.0 .

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
    cargo build --release --locked -p order-app --bin inventory \
 && install -D target/release/inventory /out/inventory

# glibc + libgcc only, no shell; the same Debian release as the builder.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/inventory /usr/local/bin/inventory
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 65532:65532
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/inventory"]
