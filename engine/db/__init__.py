"""All SQL lives here: table definitions, connections, migrations and queries."""
