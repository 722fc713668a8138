"""The books: what each attempt used and cost, the ledger that keeps it, budgets and telemetry.

``records`` is one attempt's ``UsageRecord`` and its cost at the operator's prices; ``ledger``
writes records off the request path; ``budgets`` says what a purpose has spent this period;
``telemetry`` draws an OpenTelemetry span per attempt; ``summary`` sums the ledger for the
operator's surface. The prompt path (``prompting``) writes here; nothing here sends a prompt.
"""
