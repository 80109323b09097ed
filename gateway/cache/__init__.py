"""The encrypted cache of what the upstream answers to reads by id (DESIGN.md "Encrypted cache";
SECURITY.md P-15, P-16; CONSENT.md C-10, C-13, C-22).

- :mod:`gateway.cache.crypto` — AES-256-GCM of one entry, bound to its resource and patient (AAD)
- :mod:`gateway.cache.datakeys` — the data keys: one per patient, one shared by resources that hold
  no patient data, wrapped by the key provider's KEK, counted, rotated, shredded
- :mod:`gateway.cache.entries` — the entries in MongoDB: TTL index, size bounds, invalidation that
  every instance sees
- :mod:`gateway.cache.recent` — an instance's copy of the entries it met lately, still encrypted,
  valid while the cache's change counter has not moved
- :mod:`gateway.cache.cache` — the cache as the FHIR API uses it: look up, store, revalidate,
  invalidate, purge a patient, shred a patient

Nothing here decides what is released: a cached resource goes through the same release step as
one fetched from the upstream (C-10). The FHIR API's fetcher that uses the cache is
``gateway.fhir.cached``.
"""
