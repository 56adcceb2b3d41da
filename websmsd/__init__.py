"""websmsd: an SMS bridge between Asterisk and the outside world, in one Twisted daemon."""

__version__ = "0.1.0"
