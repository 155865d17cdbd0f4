"""HTTP front protocols, header rules and the proxied exchange."""
