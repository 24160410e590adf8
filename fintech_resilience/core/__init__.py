"""The ground floor every other part stands on: clocks, storage keys, telemetry, redaction,
outcome classification, and the decorator helper. Nothing here imports a pattern, a backend or
an edge."""
