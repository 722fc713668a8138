"""Sending a prompt: the client, the wrapped model, the one prompt path and its attempts.

``client`` is ``LLM`` (``model()``, ``models()``, ``group()``); ``wrapped`` the model,
conversation and chain a plugin holds; ``send`` the one path every prompt takes, hooks around
it; ``attempts`` retries and fallbacks within the deadline; ``limits`` each model's rpm,
concurrency and cool-down; ``metering`` turns each attempt into a ``UsageRecord``; ``results``
is what hooks see of a prompt; ``hooks`` calls the hooks prompting runs.
"""
