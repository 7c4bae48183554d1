# ssegate container image: a static binary on an empty (scratch) base.
#
#   docker build -t ssegate .
#   docker run --rm -p 8080:8080 -e OPENAI_API_KEY \
#       -v "$PWD/keys:/etc/ssegate/keys:ro" ssegate
#
# The image listens on 0.0.0.0:8080, which ssegate only allows with client
# auth: mount a keys file at /etc/ssegate/keys (one `KEY name rpm tpm` line
# per client), or replace the arguments, e.g. `... ssegate --allow-anonymous`
# (the listen address comes from SSEGATE_LISTEN below either way).

# ---- build: Debian's toolchain, the pinned BearSSL/jsmn .debs, `make` -----
# Pin the base by digest (debian:bookworm-slim@sha256:...) for builds that
# must be reproducible.
FROM debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive
# The package lists stay: third_party/fetch.sh downloads with apt-get.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends gcc libc6-dev make ca-certificates musl-tools
WORKDIR /src
# Dependencies first, so this layer is reused until the pins change.
COPY Makefile ./
COPY third_party/fetch.sh third_party/
RUN make deps
COPY src/ src/
COPY tools/embed.c tools/
# Fail the build, not the container, if the binary is not static.
RUN make ssegate \
 && ! readelf -l ssegate | grep -q INTERP \
 && ./ssegate --help >/dev/null

# ---- final: the binary, a CA bundle and a user; nothing else --------------
FROM scratch
# Upstream TLS is verified against this bundle (ssegate's default --ca-file).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
# A named non-root user (uid/gid 65532) so tools that map ids to names show
# one; ssegate itself never looks users up.
COPY deploy/docker/passwd deploy/docker/group /etc/
COPY --from=build /src/ssegate /ssegate
# /etc/hosts and /etc/resolv.conf are not in the image: container runtimes
# (Docker, containerd, CRI-O) mount both, and the resolver reads them.
USER 65532:65532
EXPOSE 8080
# Kept when the arguments are replaced: inside a container the loopback
# address is useless.
ENV SSEGATE_LISTEN=0.0.0.0:8080
STOPSIGNAL SIGTERM
# No HEALTHCHECK: scratch has no shell and no curl to run one. Orchestrators
# probe GET /healthz (liveness) and GET /readyz (readiness) over HTTP
# instead; see deploy/kubernetes/deployment.yaml.
ENTRYPOINT ["/ssegate"]
CMD ["--listen", "0.0.0.0:8080", "--keys-file", "/etc/ssegate/keys", "--log-format", "json"]
