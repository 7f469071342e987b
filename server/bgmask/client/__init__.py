"""The client side: the stdlib client file loaded for the CLI and the API, and the request they share."""
