# The gateway's container image: `docker compose up` builds it (see docker-compose.yml).
FROM python:3.11-slim AS build
WORKDIR /src
COPY requirements/runtime.lock ./requirements/
RUN pip install --no-cache-dir --prefix=/install -r requirements/runtime.lock
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY smart_auth ./smart_auth
COPY consent ./consent
RUN pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent gateway
COPY --from=build /install /usr/local
USER gateway
ENV FHIR_GATEWAY_HOST=0.0.0.0 \
    FHIR_GATEWAY_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["fhir-gateway"]
CMD ["serve"]
