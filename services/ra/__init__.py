"""Router advertisements for netbooting clients: answers iPXE's IPv6 router solicitations at once."""
