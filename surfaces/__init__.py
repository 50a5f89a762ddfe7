"""The integration surfaces: HTTP, MCP and A2A in front of the one Gate.

Each is a thin adapter: it turns its request into the same sealed envelope, sends it on NATS
request/reply `map.<service>.<method>`, and maps the gate's signed response back. None of them
checks, decides or audits anything on its own (DESIGN.md §10).
"""
