"""sessionstream: an event-sourced session store with realtime streaming."""

__version__ = "0.1.0"
