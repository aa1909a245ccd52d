"""`latentmill evaluate`: the papers' checkable claims measured on the user's own model."""
