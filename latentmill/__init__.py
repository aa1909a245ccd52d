"""latentmill's command line: the top layer, over the jobs (jobs/) and the library (pipeline/)."""
