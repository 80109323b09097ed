"""The audit trail of every release of patient data (AUDIT.md A-01 … A-13).

- :mod:`~gateway.audit.facts` — what the pipeline and the authorization server hand over.
- :mod:`~gateway.audit.events`, :mod:`~gateway.audit.security` — FHIR R4 AuditEvents (IHE BALP).
- :mod:`~gateway.audit.chain` — per-instance hash chains; :mod:`~gateway.audit.checkpoints` —
  signed chain heads.
- :mod:`~gateway.audit.log` — ``AuditLog.record``: durable before it returns (group commit to
  MongoDB through :mod:`~gateway.audit.records`, or the fsynced :mod:`~gateway.audit.spool`,
  replayed later); fails closed. :mod:`~gateway.audit.runtime` — built from the settings.
- :mod:`~gateway.audit.store` — reading (``/fhir/AuditEvent``, the patient's pages);
  :mod:`~gateway.audit.disclosures` — accounting of disclosures; :mod:`~gateway.audit.retention`.
- :mod:`~gateway.audit.verify`, :mod:`~gateway.audit.cli` — ``fhir-gateway audit verify|export``.
- :mod:`~gateway.audit.forward` — sending stored events to an audit repository (optional,
  ``audit_forward_url``), in the background.
"""
