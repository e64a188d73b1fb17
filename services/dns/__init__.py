"""Authoritative DNS for the admin domain, forwarding for the rest."""
