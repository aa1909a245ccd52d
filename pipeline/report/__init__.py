"""The HTML report of a latent store: contact sheets, metric histograms, the compression curve."""
