"""The ground floor: errors, settings and the event vocabulary every layer shares."""
