# The lpd image (Debian 12, CPU LibTorch 1.13): lpd-scheduler, lpd-worker and
# lpdctl in /usr/local/bin. No entrypoint: the command picks the binary
# (helm/lpd sets it per Deployment), e.g.
#   docker run IMAGE lpd-scheduler --listen=0.0.0.0:50051 --state-dir=/var/lib/lpd/state
#   docker run IMAGE lpd-worker serve --scheduler=SCHEDULER:50051 --device=cpu
#   docker run IMAGE lpdctl list --server=SCHEDULER:50051
# GPU workers need the same sources built against a CUDA LibTorch 2.x
# (README.md, ../shared/gpu/README.md); point the chart's worker.image at
# such an image.
#
#   docker build -t lpd:0.1.0 .                # BUILD_JOBS=N: parallel compiles
FROM debian:12-slim AS build
COPY scripts/setup-debian.sh /src/scripts/setup-debian.sh
# The build's Debian packages (LibTorch, gRPC, ..., libgloo-dev for the gloo
# data-parallel backend): the same list as a developer's machine.
RUN /src/scripts/setup-debian.sh && rm -rf /var/lib/apt/lists/*
COPY . /src
# A LibTorch translation unit needs ~1.6 GB to compile: keep BUILD_JOBS within
# the builder's memory / 3 GB.
ARG BUILD_JOBS=2
RUN cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DLPD_BUILD_TESTS=OFF -DLPD_BUILD_FUZZERS=OFF -DLPD_BUILD_BENCH=OFF \
 && cmake --build /build -j "${BUILD_JOBS}" \
      --target lpd-scheduler lpd-worker lpdctl \
 && strip --strip-unneeded /build/server/lpd-scheduler \
      /build/worker/lpd-worker /build/client/lpdctl

FROM debian:12-slim
# The shared libraries the three binaries load (Debian 12 names):
#   libtorch1.13 (+ libgloo0)  the engine, in lpd-worker
#   libopenblas0-pthread       a fast BLAS for LibTorch on the CPU (~30x the
#                              reference one, which Debian picks otherwise)
#   libgrpc++1.51 libprotobuf32 libabsl20220623   gRPC, protobuf, Abseil
#   libyaml-cpp0.7             job specs (lpdctl, workers)
#   libsqlite3-0               the scheduler's job store
#   libprometheus-cpp-core1.0  metrics (lpd-scheduler, lpd-worker)
#   libcurl4 libssl3           s3:// storage (HTTP, SigV4, SHA-256)
#   ca-certificates            TLS to S3 endpoints
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libtorch1.13 libgloo0 libopenblas0-pthread \
      libgrpc++1.51 libprotobuf32 libabsl20220623 \
      libyaml-cpp0.7 libsqlite3-0 libprometheus-cpp-core1.0 libcurl4 libssl3 \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/server/lpd-scheduler /build/worker/lpd-worker \
     /build/client/lpdctl /usr/local/bin/
COPY deploy/examples/ /usr/share/lpd/examples/
# Non-root. /var/lib/lpd: the scheduler's state (a volume in Kubernetes) and
# the working folder.
RUN groupadd --gid 10001 lpd \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/lpd \
      --shell /usr/sbin/nologin lpd \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/lpd /var/lib/lpd/state
USER 10001:10001
WORKDIR /var/lib/lpd
EXPOSE 50051
# The binaries handle SIGTERM themselves (graceful stop; a worker checkpoints
# and requeues its task), also as PID 1.
CMD ["lpd-scheduler", "--listen=0.0.0.0:50051", "--state-dir=/var/lib/lpd/state"]
