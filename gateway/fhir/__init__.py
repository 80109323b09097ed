"""The FHIR API: the request pipeline and one module per step (DESIGN.md "The request pipeline")."""
