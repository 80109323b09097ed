"""Sign-in accounts, not SMART: users, passwords, second factors, sessions, throttling, security
events."""
