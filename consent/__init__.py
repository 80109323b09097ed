"""Patient consent for the FHIR gateway: the FHIR R4 Consent resource, the decision engine, data
minimisation and the consent store (CONSENT.md C-01 to C-18, C-22, C-26, C-28).

Pure Python over plain dicts; no web framework. What the gateway and the authorization server use:

- :mod:`consent.model`: ``validate(resource)`` (raises ``ConsentInvalid`` with one issue per
  broken rule), ``app_grant(...)`` (the Consent of C-05), ``CLIENT_SYSTEM`` in ``consent.codes``.
- :mod:`consent.decide`: ``RequestAttributes``, ``Decision``, ``decide``, ``decide_many`` and
  ``compile_consents(consents, request) -> Evaluator`` (compile once per request, then
  ``evaluator.decide(resource)`` per resource; ``evaluator.refusal()`` before fetching).
- :mod:`consent.facts` and :mod:`consent.sensitive`: what the engine reads from a resource, and
  which labels and codes make it sensitive (wherever they sit, C-26).
- :mod:`consent.minimise`: ``profile_for(purposes).apply(resource)``, ``minimise``,
  ``PURPOSES``; :mod:`consent.deidentify`: the keep rules of research
  profiles (C-28); :mod:`consent.mentions`: ``without_mentions`` (narrative and references'
  displays, C-26); :mod:`consent.subsetting`: ``apply_elements``, ``apply_summary``.
- :mod:`consent.store`: ``ConsentStore`` (create/update/delete/read/vread/history/search,
  ``active_for``, ``grant_app``, ``revoke_app``, ``erase_patient``).
- :mod:`consent.errors`: the error hierarchy.
"""
