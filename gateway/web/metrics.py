"""Prometheus metrics (text exposition format at ``/metrics``), one registry per application so
that several gateways in one process (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The gateway's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "fhir_gateway_requests",
            "Requests answered, by FHIR interaction (or endpoint) and HTTP status.",
            ["interaction", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fhir_gateway_request_duration_seconds",
            "Time from request received to response ready, by interaction and status.",
            ["interaction", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "fhir_gateway_upstream_duration_seconds",
            "Time the upstream FHIR server took to answer, by interaction.",
            ["interaction"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        # forwarding to an audit repository (gateway.audit.forward): counts only, no chain names
        self.audit_forward_backlog = Gauge(
            "fhir_gateway_audit_forward_backlog",
            "AuditEvents stored in MongoDB and not yet taken by the audit repository (every "
            "chain), as this instance last counted.",
            registry=self.registry,
        )
        self.audit_forwarded = Counter(
            "fhir_gateway_audit_forwarded",
            "AuditEvents this instance sent to the audit repository and it took.",
            registry=self.registry,
        )
        self.audit_forward_failures = Counter(
            "fhir_gateway_audit_forward_failures",
            "Attempts to send an AuditEvent that the audit repository refused or did not answer.",
            registry=self.registry,
        )

        self.cache_hits = Counter(
            "fhir_gateway_cache_hits",
            "Reads by id answered from the encrypted cache without the upstream, by interaction.",
            ["interaction"],
            registry=self.registry,
        )
        self.cache_misses = Counter(
            "fhir_gateway_cache_misses",
            "Cacheable reads the cache could not answer (fetched from the upstream), by "
            "interaction.",
            ["interaction"],
            registry=self.registry,
        )
        self.cache_revalidations = Counter(
            "fhir_gateway_cache_revalidations",
            "Stale entries revalidated with the upstream (If-None-Match), by outcome: unchanged "
            "(304, the entry is kept) or changed.",
            ["outcome"],
            registry=self.registry,
        )
        self.cache_decrypt_failures = Counter(
            "fhir_gateway_cache_decrypt_failures",
            "Cache entries that did not decrypt (altered, or moved from another record); each is "
            "treated as a miss and logged.",
            registry=self.registry,
        )
        self.cache_evictions = Counter(
            "fhir_gateway_cache_evictions",
            "Entries removed to keep the cache within its bounds (entries, bytes).",
            registry=self.registry,
        )

    def observe_request(self, interaction: str, status: int, seconds: float) -> None:
        code = str(status)
        self.requests.labels(interaction, code).inc()
        self.latency.labels(interaction, code).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
