"""Imported by pycluster_boot.pth at interpreter start, to boot a worker's runtime early."""
