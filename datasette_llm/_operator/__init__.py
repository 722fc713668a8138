"""The operator's surface: validation, the routing report, the ``/-/llm`` page and the CLI."""
