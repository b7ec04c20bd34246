"""openfang.workers.llm: LLM providers for agents.

``types`` holds the provider-neutral values; ``transport`` the HTTP boundary; ``openai_chat``,
``anthropic_messages`` and ``scripted`` the providers; ``providers`` builds one from a manifest's model table.
"""
