"""What each endpoint does, as plain functions over a Session: the routers only parse,
authorize and call these."""
