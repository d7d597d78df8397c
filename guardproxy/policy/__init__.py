"""Region policies: schema, loader, compiled table, reload."""
