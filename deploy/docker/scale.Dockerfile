# syntax=docker/dockerfile:1
# The `scale` image: the daemon (`scale serve`), `scale train`, `scale eval`, `scale check`.
#
#   docker build -f deploy/docker/scale.Dockerfile -t scale-autoscaler/scale:0.1.0 .
#
# Built from the repository root with the project's own `make build`. No image is built on the
# project's development machine (it has no Docker): images are built elsewhere (CI, a release
# machine), and nothing in `make test` needs one. The chart (deploy/helm/scale) runs this image.
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN make build

FROM debian:bookworm-slim
COPY --from=build /src/target/release/scale /usr/local/bin/scale
# The chart's securityContext: non-root (65532), read-only root file system.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/scale"]
