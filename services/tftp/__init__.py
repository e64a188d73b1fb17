"""Read-only TFTP server for boot loaders (RFC 1350, 2347-2349, 7440)."""
