"""Compatibility with plugin files written for other frameworks (ms-swift: :mod:`.ms_swift`)."""
