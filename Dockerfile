# lpd worker image (Debian 12, CPU LibTorch 1.13). For GPU workers, build the
# same sources against a CUDA LibTorch 2.x (see README.md).
FROM debian:12-slim AS build
COPY scripts/setup-debian.sh /src/scripts/setup-debian.sh
RUN /src/scripts/setup-debian.sh
COPY . /src
RUN cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DLPD_BUILD_TESTS=OFF -DLPD_BUILD_FUZZERS=OFF -DLPD_BUILD_BENCH=OFF \
 && cmake --build /build --target lpd-worker

FROM debian:12-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libtorch1.13 libopenblas0-pthread libabsl20220623 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/worker/lpd-worker /usr/local/bin/lpd-worker
RUN useradd --system --uid 10001 lpd
USER lpd
ENTRYPOINT ["/usr/local/bin/lpd-worker"]
