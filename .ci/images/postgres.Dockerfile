# PostgreSQL 15 from Debian's packages, for CI's scale-out stack (registry images cannot be pulled there): a
# stand-in for the official `postgres:15` image with what the compose file uses of it (POSTGRES_USER,
# POSTGRES_PASSWORD, POSTGRES_DB, /var/lib/postgresql/data, pg_isready on PATH).
#   podman build -f .ci/images/postgres.Dockerfile --build-arg BASE=localhost/debian-base:bookworm .ci/images
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/postgresql/data /run/postgresql /docker-entrypoint-initdb.d \
 && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
# SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for every client to leave)
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
CMD ["postgres"]
