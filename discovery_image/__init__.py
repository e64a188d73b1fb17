"""Kiln's discovery image: a Debian kernel plus a busybox initramfs that runs the node agent.

`python -m discovery_image.build` makes it from installed Debian packages (nothing is downloaded).
"""
