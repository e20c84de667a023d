# dns2dot: plain DNS in (UDP and TCP), DNS-over-TLS out.
#   docker build -t dns2dot . && docker run -p 127.0.0.1:53:5353/udp -p 127.0.0.1:53:5353/tcp dns2dot
FROM python:3.11-slim

WORKDIR /app
COPY setup.py pyproject.toml README.md dnsproxy.py ./
COPY dns2dot ./dns2dot
RUN pip install --no-cache-dir . \
    && useradd --system --no-create-home --uid 10053 dns2dot

# Inside the container dns2dot listens on a high port on all of the container's
# interfaces, so it needs no privilege at all; publish it on the host's port 53
# (docker-compose.yml binds it to the host's 127.0.0.1 only).
ENV DNS2DOT_LISTEN=0.0.0.0:5353 \
    PYTHONUNBUFFERED=1
USER 10053
EXPOSE 5353/udp 5353/tcp

# Alive means "answers DNS at all" (SERVFAIL included), not "the internet works".
HEALTHCHECK --interval=30s --timeout=10s --start-period=5s --retries=3 \
    CMD ["python", "-m", "dns2dot.probe"]

ENTRYPOINT ["dns2dot"]
CMD []
