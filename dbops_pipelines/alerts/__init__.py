"""Alerts: what went wrong (or stayed silent), routed by severity to Slack, webhooks, e-mail and
PagerDuty, de-duplicated, reminded and resolved. Plain Python; the sensor lives in defs/alerts.py."""
