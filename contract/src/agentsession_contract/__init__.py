"""agentsession-contract: what the operator, the runner and the gateway agree on, and nothing else.

The run config and summary (`run`), the gateway's endpoint file and attempt report (`gateway`),
redaction of credential-shaped text, and the transcript store's layout, codec and SessionStore
(`store`). Each production process imports only this package besides its own: the tree shows
the trust boundary (operator, runner = the agent's container, gateway = the credentials).
"""
