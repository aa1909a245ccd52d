"""The commands of `latentmill`, by workflow step; each builds its job's settings and calls the job."""
