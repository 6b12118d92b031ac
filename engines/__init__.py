"""Model engines: the only code that knows a model provider."""
