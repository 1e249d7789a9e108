"""HTTP routes: thin handlers that parse, call one registry operation and shape the answer."""
