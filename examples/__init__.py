"""Example handlers shipped with procpool-kafka (used by scripts/demo)."""
