"""What operators read from Redis: the live state of breakers, limits and idempotency records, and
the server checks (version, eviction policy, Cluster slots, scripts, clock). Used by the
``fintech-resilience`` command and by ``fr.check_config``."""
