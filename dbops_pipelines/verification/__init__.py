"""Restore verification: restore a backup into a scratch database, compare it with the backup's
manifest, run the operator's sanity queries, measure the real RTO, and keep the evidence."""
