"""Web plumbing shared by every route: the FHIR error hierarchy and its rendering, middlewares,
request keys, logs, metrics, health, CORS."""
