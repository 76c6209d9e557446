# Debian's HAProxy where compose expects the official haproxy image (benchmark only).
FROM python:3.11.14-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends haproxy=2.6.* wget \
    && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/etc/haproxy
USER haproxy
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
