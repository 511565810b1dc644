"""Shared plumbing: errors, image decoding, atomic file writes, option fields, progress, device."""
