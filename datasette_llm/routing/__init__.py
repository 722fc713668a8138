"""Which model serves a call: purposes, llm's models, keys, the policy, routing and ``llm-use``.

``purposes`` and ``catalog`` are what plugins use models for; ``models`` is llm's installed
models; ``keys`` where each model's key comes from; ``policy`` the one rule deciding whether a
model may serve a purpose for an actor; ``overlay`` the configuration routing uses (the YAML
with the overrides it admits); ``route`` picks the model and plans its fallbacks;
``permissions`` says who may use a purpose; ``hooks`` calls the hooks routing asks.
"""
