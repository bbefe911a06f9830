"""Request and response bodies. Responses are built from repository rows by the
``from_row`` constructors; ORM objects never leave the service layer."""
