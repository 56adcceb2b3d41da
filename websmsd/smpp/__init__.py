"""SMPP 3.4: ``pdu`` (the codec, sans-IO), ``receipt`` (delivery receipts, pure) and
``esme`` (the Twisted client bind). Importing this package imports none of them, so the
pure modules stay free of Twisted."""
