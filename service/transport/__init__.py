"""How requests arrive and answers leave: HTTP routes, the WebSocket, wire formats and body limits."""
