"""openfang.workers.host: the agent host of a worker process (its agents, their jobs, services and guards).

``agent_host`` runs the sandboxes in fuel slices; ``wiring`` builds a host with the real services.
"""
