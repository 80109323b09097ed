"""The proxy plumbing: the upstream session, URL rewriting, header allow-lists, content
negotiation."""
