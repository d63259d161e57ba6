# Redis from Debian's package, for CI's scale-out stack (registry images cannot be pulled there): a stand-in
# for the official `redis:7` image with what the compose file uses of it (redis-server and redis-cli on
# PATH, /data, running as the `redis` user).
#   podman build -f .ci/images/redis.Dockerfile --build-arg BASE=localhost/debian-base:bookworm .ci/images
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/redis-entrypoint
WORKDIR /data
VOLUME ["/data"]
EXPOSE 6379
ENTRYPOINT ["redis-entrypoint"]
CMD ["redis-server"]
