"""The web UI of workflows and plans, served by the HTTP gateway under /ui (surfaces/ui/app.py).

Static assets ship in surfaces/ui/static (package data): plain HTML, CSS and JavaScript.
"""

from surfaces.ui.app import ACTIONS, close_streams, ui_routes

__all__ = ["ACTIONS", "close_streams", "ui_routes"]
